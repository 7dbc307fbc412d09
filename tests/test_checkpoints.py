"""Checkpoints: every file checked before resuming, optimizer state matched by name."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastl.checkpoints import (
    TrainState,
    latest_readable_state,
    list_checkpoints,
    restore_weights,
    save_checkpoint,
)

CHECKPOINT_FILES = ("model.weights.h5", "optimizer.npz", "rng.npz", "state.json")


def _tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.5, seed=1, name="drop")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden), name="tiny")


def _sgd_step(model, optimizer) -> None:
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 4)), tf.float32)
    with tf.GradientTape() as tape:
        loss = optimizer.scale_loss(tf.reduce_mean(model(x, training=True) ** 2))
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))


@pytest.fixture
def two_checkpoints(tmp_path):
    model = _tiny_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    for epoch in (1, 2):
        _sgd_step(model, optimizer)
        save_checkpoint(tmp_path, model, optimizer, TrainState(epoch=epoch, phase_epoch=epoch))
    return tmp_path


# ------------------------------------------------------------------ fallback
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_file_falls_back_to_the_previous_checkpoint(two_checkpoints, name):
    older, latest = list_checkpoints(two_checkpoints)
    path = latest / name
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.warns(UserWarning, match=rf"{latest.name}.* is unreadable .*falling back"):
        checkpoint, state = latest_readable_state(two_checkpoints)
    assert checkpoint == older and state.epoch == 1
    model = _tiny_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    restore_weights(checkpoint, model, optimizer)  # what a resume does next
    assert int(optimizer.iterations) == 1

"""Checkpoints: every file checked before resuming, optimizer state matched by name."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastl.training.checkpoints import (
    TrainState,
    latest_readable_state,
    list_checkpoints,
    read_best_weights,
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


# ------------------------------------------------------------------ best weights
def test_best_weights_round_trip_and_a_shared_array_is_written_once(tmp_path):
    model = _tiny_model()
    frozen = np.arange(1000, dtype=np.float32)  # e.g. a frozen base, shared by snapshots
    run_best, phase_best = [frozen, np.ones(3, np.float32)], [frozen, np.zeros(3, np.float32)]
    path = save_checkpoint(tmp_path / "shared", model, None, TrainState(epoch=3),
                           best={"best": run_best, "phase_best": phase_best})
    single = save_checkpoint(tmp_path / "single", model, None, TrainState(epoch=3),
                             best={"best": run_best})
    saved = read_best_weights(path)
    assert sorted(saved) == ["best", "phase_best"]
    for key, expected in (("best", run_best), ("phase_best", phase_best)):
        for got, want in zip(saved[key], expected, strict=True):
            np.testing.assert_array_equal(got, want)
    extra = (path / "best.npz").stat().st_size - (single / "best.npz").stat().st_size
    assert extra < frozen.nbytes  # the second list added its own array, not the frozen one


def test_best_weights_of_the_earlier_format_still_read(tmp_path):
    with open(tmp_path / "best.npz", "wb") as handle:  # one entry per array, by key
        np.savez(handle, **{"best/0000": np.ones(2), "best/0001": np.zeros(3),
                            "phase_best/0000": np.full(2, 5.0)})
    saved = read_best_weights(tmp_path)
    assert [w.shape for w in saved["best"]] == [(2,), (3,)]
    np.testing.assert_array_equal(saved["phase_best"][0], [5.0, 5.0])


# ------------------------------------------------------------------ precision change
def _inner_state(optimizer) -> dict[str, np.ndarray]:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return {v.name: np.asarray(v) for v in inner.variables}


def _trained(tmp_path, loss_scaled: bool):
    model = _tiny_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    if loss_scaled:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=64.0)
    optimizer.build(model.trainable_variables)
    for _ in range(2):
        _sgd_step(model, optimizer)
    path = save_checkpoint(tmp_path, model, optimizer, TrainState(epoch=1, phase_epoch=1))
    return path, model, optimizer


def test_a_loss_scaled_checkpoint_restores_into_a_float32_optimizer(tmp_path):
    # --resume --precision float32 after a mixed_float16 run (kerastl's advice after
    # a NaN): the slots and step count carry over, the loss scale no longer applies.
    path, saved_model, saved_optimizer = _trained(tmp_path, loss_scaled=True)
    model = _tiny_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    with pytest.warns(UserWarning, match="loss-scale state .* not restored"):
        restore_weights(path, model, optimizer)
    expected = _inner_state(saved_optimizer)
    assert int(expected["iteration"]) == 2
    for name, value in _inner_state(optimizer).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    for a, b in zip(model.get_weights(), saved_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_float32_checkpoint_restores_into_a_loss_scaled_optimizer_with_a_fresh_scale(tmp_path):
    path, _, saved_optimizer = _trained(tmp_path, loss_scaled=False)
    model = _tiny_model()
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=64.0)
    optimizer.build(model.trainable_variables)
    with pytest.warns(UserWarning, match="fresh loss scale"):
        restore_weights(path, model, optimizer)
    expected = _inner_state(saved_optimizer)
    for name, value in _inner_state(optimizer).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert float(optimizer.dynamic_scale) == 64.0


def test_an_optimizer_of_another_shape_is_refused_naming_the_variable(tmp_path):
    path, _, _ = _trained(tmp_path, loss_scaled=False)
    model = _tiny_model()
    optimizer = keras.optimizers.Adam(0.1)  # other slots than SGD's momentum
    optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="velocity"):
        restore_weights(path, model, optimizer)

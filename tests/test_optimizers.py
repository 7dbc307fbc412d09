"""Discriminative learning rates: each block below the top learns at decay**depth."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.freezing import backbone_blocks, find_backbone
from kerastl.optimizers import block_lr_multipliers, make_optimizer


def _vgg():
    return kerastl.build_model("VGG16", 2, input_shape=32, weights=None, mode="full",
                               dense_units=())


def test_multipliers_follow_the_registry_blocks_top_down():
    model = _vgg()
    rates = block_lr_multipliers(model, 0.5)
    base, entry = find_backbone(model)
    blocks = backbone_blocks(base, entry)
    for depth, block in enumerate(reversed(blocks)):
        for layer in block.layers:
            for variable in layer.weights:
                assert rates.get(variable.path, 1.0) == pytest.approx(0.5 ** depth)
    head = model.get_layer("predictions").kernel.path
    assert head not in rates


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_one_step_moves_each_block_by_its_factor(name):
    model = _vgg()
    rates = block_lr_multipliers(model, 0.5)
    reference = make_optimizer(name, 1e-3, momentum=0.0)
    scaled = make_optimizer(name, 1e-3, momentum=0.0, lr_multipliers=rates)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    labels = np.array([0, 1, 0, 1])
    start = model.get_weights()
    moves = []
    for optimizer in (reference, scaled):
        model.set_weights(start)
        optimizer.build(model.trainable_variables)
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels, model(images))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        moves.append({v.path: np.asarray(v) - w for v, w in
                      zip(model.trainable_variables, _trainable(start, model), strict=True)})
    weights = {v.path: np.abs(w).max() for v, w in
               zip(model.trainable_variables, _trainable(start, model), strict=True)}
    for path, move in moves[1].items():
        expected = moves[0][path] * rates.get(path, 1.0)
        # A move is (w - lr*g) - w in float32: rounding of order eps * |w| on each side.
        atol = 4 * np.finfo(np.float32).eps * max(weights[path], 1e-3)
        np.testing.assert_allclose(move, expected, rtol=1e-4, atol=atol, err_msg=path)


def _trainable(weights, model):
    by_path = dict(zip([v.path for v in model.weights], weights, strict=True))
    return [by_path[v.path] for v in model.trainable_variables]


def test_decay_outside_zero_one_is_refused():
    with pytest.raises(kerastl.ConfigError, match="block_lr_decay"):
        block_lr_multipliers(_vgg(), 1.5)
    with pytest.raises(kerastl.ConfigError, match="block_lr_decay"):
        kerastl.RunConfig(block_lr_decay=0).resolve()

"""Discriminative learning rates: each block below the top learns at decay**depth."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.models.freezing import backbone_blocks, find_backbone
from kerastl.recipes.resolve import resolve_config
from kerastl.training.optimizers import block_lr_multipliers, make_optimizer


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
        resolve_config(kerastl.RunConfig(block_lr_decay=0))


# ------------------------------------------------------------------ L2-SP
def _drifted(optimizer, start: float = 1.0, drift: float = 3.0) -> keras.Variable:
    """A variable the optimizer was built on at ``start``, then moved to ``drift``."""
    variable = keras.Variable(np.full(3, start, np.float32))
    optimizer.build([variable])
    variable.assign(np.full(3, drift, np.float32))
    return variable


def test_anchor_decay_pulls_toward_the_built_weights_not_toward_zero():
    anchored = make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5, anchor_decay=2.0)
    variable = _drifted(anchored)
    anchored.apply_gradients([(tf.zeros(3), variable)])
    # w - lr * F * (w - w_built) = 3 - 0.1 * 2 * (3 - 1); no decay toward zero.
    np.testing.assert_allclose(np.asarray(variable), 2.6, rtol=1e-6)
    plain = make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5)
    variable = _drifted(plain)
    plain.apply_gradients([(tf.zeros(3), variable)])
    np.testing.assert_allclose(np.asarray(variable), 3 - 0.1 * 0.5 * 3, rtol=1e-6)


def test_anchor_decay_uses_each_variables_discriminative_rate():
    variable = keras.Variable(np.full(3, 1.0, np.float32))
    optimizer = make_optimizer("sgd", 0.1, momentum=0.0, anchor_decay=2.0,
                               lr_multipliers={variable.path: 0.5})
    optimizer.build([variable])
    variable.assign(np.full(3, 3.0, np.float32))
    optimizer.apply_gradients([(tf.zeros(3), variable)])
    np.testing.assert_allclose(np.asarray(variable), 3 - 0.05 * 2 * 2, rtol=1e-6)


def test_anchors_are_checkpointed_so_a_resumed_phase_decays_toward_the_same_weights(tmp_path):
    from kerastl.training.checkpoints import TrainState, restore_weights, save_checkpoint

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))
    first = make_optimizer("adamw", 1e-2, anchor_decay=3.0)
    first.build(model.trainable_variables)
    built = [np.asarray(v).copy() for v in model.trainable_variables]
    for variable in model.trainable_variables:
        variable.assign(variable + 1.0)  # training moved the weights
    path = save_checkpoint(tmp_path, model, first, TrainState(epoch=1, phase_epoch=1))
    again = make_optimizer("adamw", 1e-2, anchor_decay=3.0)
    again.build(model.trainable_variables)  # a resumed process builds on the moved weights
    restore_weights(path, model, again)
    anchors = [np.asarray(again._anchors[again._var_key(v)]) for v in model.trainable_variables]
    for anchor, expected in zip(anchors, built, strict=True):
        np.testing.assert_array_equal(anchor, expected)


def test_negative_anchor_decay_is_refused():
    with pytest.raises(kerastl.ConfigError, match="anchor_decay"):
        make_optimizer("adamw", 1e-3, anchor_decay=-1.0)
    with pytest.raises(kerastl.ConfigError, match="anchor_decay"):
        resolve_config(kerastl.RunConfig(anchor_decay=-0.5))

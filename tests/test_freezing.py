"""Fine-tuning keeps BatchNorm and frozen layers exactly as they were."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import kerastl

from .conftest import is_batchnorm


def digits_rgb32(n: int = 96):
    """Real data: scikit-learn's 8x8 digits upscaled to 32x32 RGB in [0, 255]."""
    digits = load_digits()
    x = digits.images[:n, :, :, None] * 16.0
    x = np.repeat(np.repeat(np.repeat(x, 4, axis=1), 4, axis=2), 3, axis=3)
    return x.astype("float32"), digits.target[:n]


def _compile(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def test_finetune_keeps_batchnorm_statistics_and_frozen_weights_bit_identical():
    keras.utils.set_random_seed(0)
    x, y = digits_rgb32()
    model = kerastl.build_model("ResNet50", 10, input_shape=32, weights=None,
                                mode="finetune", unfreeze_blocks=2, head="avg")
    _compile(model)
    base = model.get_layer("backbone")
    blocks = kerastl.backbone_blocks(base, "ResNet50")
    unfrozen = [layer for block in blocks[-2:] for layer in block.layers]
    frozen = [layer for block in blocks[:-2] for layer in block.layers]
    before = {v.path: np.array(v) for v in base.weights}
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    after = {v.path: np.array(v) for v in base.weights}
    for layer in frozen:
        for v in layer.weights:
            assert np.array_equal(before[v.path], after[v.path]), v.path
    for layer in unfrozen:
        if is_batchnorm(layer):
            for v in layer.weights:
                assert np.array_equal(before[v.path], after[v.path]), v.path
    changed = [layer.name for layer in unfrozen if not is_batchnorm(layer) and layer.weights
               and not np.array_equal(before[layer.weights[0].path],
                                      after[layer.weights[0].path])]
    assert changed, "the unfrozen convolutions should have trained"


def test_set_regime_on_a_compiled_model_recompiles_so_new_flags_train():
    keras.utils.set_random_seed(0)
    x, y = digits_rgb32(64)
    model = kerastl.build_model("MobileNetV2", 10, input_shape=32, weights=None,
                                head="avg", dense_units=())
    _compile(model)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    plan = kerastl.set_regime(model, "finetune", unfreeze_blocks=1)
    top_conv = model.get_layer("backbone").get_layer("Conv_1")
    before = np.array(top_conv.kernel)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(before, np.array(top_conv.kernel))
    assert plan.trainable_params == kerastl.models.freezing.count_params(model.trainable_weights)


def test_bn_policy_train_lets_unfrozen_batchnorm_update_its_statistics():
    keras.utils.set_random_seed(0)
    x, y = digits_rgb32(64)
    model = kerastl.build_model("MobileNetV2", 10, input_shape=32, weights=None,
                                mode="finetune", unfreeze_blocks=1, bn_policy="train",
                                head="avg", dense_units=())
    _compile(model)
    bn = model.get_layer("backbone").get_layer("Conv_1_bn")
    before = np.array(bn.moving_mean)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(before, np.array(bn.moving_mean))


def test_bn_policy_train_on_a_model_built_with_frozen_bn_is_refused():
    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None)
    with pytest.raises(kerastl.ConfigError, match="bn_policy='train'"):
        kerastl.set_regime(model, "finetune", unfreeze_blocks=1, bn_policy="train")


def test_unfreeze_top_that_splits_a_residual_block_is_reported():
    model = kerastl.build_model("ResNet50", 3, input_shape=32, weights=None)
    plan = kerastl.set_regime(model, "finetune", unfreeze_top=5)
    assert plan.warnings and "conv5_block3" in plan.warnings[0]
    text = str(plan)
    assert "conv5_block3" in text and "partial" in text and "BatchNorm" in text


def test_unfreeze_blocks_larger_than_the_base_is_refused():
    model = kerastl.build_model("VGG16", 3, input_shape=32, weights=None)
    with pytest.raises(kerastl.ConfigError, match="has 6 blocks"):
        kerastl.set_regime(model, "finetune", unfreeze_blocks=7)


# Budget: 4 epochs of 800 digits at batch 32 = 100 Adam steps. Measured at the end (train
# accuracy = the epoch-4 running mean; eval = evaluate on the same 800), seeds 0-4:
#   AVX-512 (native):            train 0.511 0.465 0.564 0.431 0.425, eval 0.571-0.686
#   ONEDNN_MAX_CPU_ISA=AVX2:     train 0.516 0.477 0.595 0.419 0.446, eval 0.526-0.759
#   Keras' BatchNorm momentum 0.999 instead (native, seeds 0-2): the same train accuracy,
#   eval 0.099 0.099 0.099, i.e. chance.
# (An AVX2-only CPU measured train 0.442 for seed 0, failing the old bar of 0.5.) The bar
# is well below the worst learner (0.419) yet 2.5x chance, so 0.8 x train accuracy stays
# far above what a run with stale BatchNorm statistics evaluates to.
SCRATCH_EPOCHS = 4
SCRATCH_MIN_TRAIN_ACCURACY = 0.25


@pytest.mark.numerics
def test_scratch_model_evaluates_as_well_as_it_trains():
    # Keras Applications' BatchNorm momentum (0.999) would leave the moving statistics
    # at their initial values after a short run and evaluation near chance.
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = np.repeat(np.repeat(np.repeat(digits.images[:, :, :, None] * 16.0, 4, 1), 4, 2), 3, 3)
    x, y = x.astype("float32")[:800], digits.target[:800]
    model = kerastl.build_model("MobileNetV2", 10, input_shape=32, weights=None,
                                mode="scratch", head="avg", dense_units=(),
                                backbone_kwargs={"alpha": 0.35})
    _compile(model)
    history = model.fit(x, y, epochs=SCRATCH_EPOCHS, batch_size=32, verbose=0)
    train_accuracy = history.history["accuracy"][-1]
    _, eval_accuracy = model.evaluate(x, y, verbose=0)
    assert train_accuracy > SCRATCH_MIN_TRAIN_ACCURACY
    assert eval_accuracy > 0.8 * train_accuracy


def test_a_feature_extractor_does_not_make_bn_policy_train_look_frozen():
    # The cached-feature path builds an extractor that calls the base with
    # training=False; that call belongs to another model and must not count.
    from kerastl.models.build import feature_extractor

    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                bn_policy="train", backbone_kwargs={"alpha": 0.35})
    feature_extractor(model)
    plan = kerastl.set_regime(model, "finetune", unfreeze_blocks=1, bn_policy="train")
    assert plan.bn_trainable > 0
    frozen = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                 backbone_kwargs={"alpha": 0.35})
    with pytest.raises(kerastl.ConfigError, match="bn_policy='train'"):
        kerastl.set_regime(frozen, "finetune", unfreeze_blocks=1, bn_policy="train")

"""The multi-depth probe: every depth of the frozen base and the pixels, one linear layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import kerastl
from kerastl.core.errors import ConfigError
from kerastl.models.build import feature_extractor, head_model
from kerastl.models.feature_cache import cache_key
from kerastl.models.gradcam import cam_model
from kerastl.models.multi_depth import (
    MAX_DEPTHS,
    feature_groups,
    fit_multi_depth_probe,
    multi_depth_model,
    read_depths,
)
from kerastl.outputs.run_dir import RunDir
from kerastl.recipes.pixel_blend import blend_pixels
from kerastl.recipes.resolve import resolve_config

from .conftest import source_backbone, source_model


def _digits(n: int = 90, start: int = 0, classes: int = 3) -> kerastl.ImageData:
    digits = load_digits()
    keep = digits.target < classes
    images = (digits.images[keep] * 16).astype("uint8")[start:start + n]
    return kerastl.from_arrays(images, digits.target[keep][start:start + n],
                               class_names=[str(i) for i in range(classes)])


def _weights(layers) -> list[np.ndarray]:
    return [np.array(w) for layer in layers for w in layer.get_weights()]


def test_probe_predicts_what_scikit_learn_predicts_on_the_grouped_features():
    model = source_model(num_classes=3)
    probe = multi_depth_model(model)
    train = _digits(90)
    facts = fit_multi_depth_probe(probe, train, seed=0)
    # The same regression, fitted independently: each feature standardised, each group
    # scaled by 1/sqrt(width), C as chosen.
    features, labels = read_depths(probe, train.batches(32, 64))
    widths = [w for _, w in feature_groups(probe)]
    std = features.std(0) + 1e-6
    # Each std floored at 0.3 x its group's median (a nearly constant feature would get
    # a weight fine-tuning cannot afford).
    ends = np.cumsum(widths)
    floors = np.concatenate([np.full(w, 0.3 * np.median(std[end - w:end]))
                             for w, end in zip(widths, ends, strict=True)])
    scale = np.sqrt(std ** 2 + floors ** 2) * np.sqrt(np.repeat(widths, widths))
    scaled = (features - features.mean(0)) / scale
    reference = LogisticRegression(C=facts["C"], max_iter=5000, random_state=0)
    reference.fit(scaled, labels)
    test = _digits(60, start=90)
    test_features, _ = read_depths(probe, test.batches(32, 64))
    test_scaled = (test_features - features.mean(0)) / scale
    keras_classes = np.concatenate([np.asarray(probe(x, training=False)).argmax(1)
                                    for x, _ in test.batches(32, 64)])
    assert np.mean(keras_classes == reference.predict(test_scaled)) >= 0.97
    assert facts["width"] == features.shape[1] == sum(w for _, w in feature_groups(probe))


def test_a_blended_multidepth_model_names_its_own_pixel_layers_and_loads(tmp_path):
    # auto's default: the multi-depth head (pooling the pixels as its depth 0), then
    # the pixel blend, which reads the pixels again under names of its own.
    probe = multi_depth_model(source_model(num_classes=3))
    train = _digits(90)
    fit_multi_depth_probe(probe, train, seed=0)
    blended, _ = blend_pixels(probe, train, image_size=32, task="multiclass")
    assert {"pixels_pool", "blend_pixels_flat", "pixel_logits"} <= {
        layer.name for layer in blended.layers}
    blended.save(tmp_path / "blended.keras")
    loaded = keras.models.load_model(tmp_path / "blended.keras", safe_mode=True)
    images = next(iter(train.batches(32, 16)))[0]
    np.testing.assert_allclose(loaded(images), blended(images), atol=1e-5)


def test_groups_start_with_the_pixels_and_end_with_the_base_output():
    model = source_model(num_classes=3, size=64)
    probe = multi_depth_model(model)
    groups = feature_groups(probe)
    assert groups[0] == ("pixels", 16 * 16 * 3)  # 64 px pooled 4x4
    depths = [name for name, _ in groups[1:] if name.endswith("/avg")]
    assert 2 <= len(depths) <= MAX_DEPTHS
    base = model.get_layer("backbone")
    assert groups[-1][1] in (base.output.shape[-1], 4 * base.output.shape[-1])
    taps = probe.get_layer("backbone").outputs
    assert tuple(taps[-1].shape) == tuple(base.output.shape)
    assert probe.get_layer("predictions").input.shape[-1] == sum(w for _, w in groups)


def test_max_depths_keeps_the_last_block():
    model = source_model(num_classes=3)
    probe = multi_depth_model(model, max_depths=3)
    taps = probe.get_layer("backbone").outputs
    assert len(taps) == 3
    assert tuple(taps[-1].shape) == tuple(model.get_layer("backbone").output.shape)
    with pytest.raises(ConfigError, match="max_depths must be >= 1; received 0"):
        multi_depth_model(model, max_depths=0)


def test_fitting_leaves_the_base_and_its_batchnorm_statistics_unchanged():
    model = source_model(num_classes=3)
    base = model.get_layer("backbone")
    before = _weights(base.layers)
    probe, facts = kerastl.multi_depth_probe(model, _digits(60))
    after = _weights(base.layers)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not probe.get_layer("backbone").trainable_weights
    assert facts["cv_accuracy"] is not None and facts["fit_images"] == 60


def test_model_file_loads_in_plain_keras_and_predicts_the_same(tmp_path):
    probe, _ = kerastl.multi_depth_probe(source_model(num_classes=3), _digits(60))
    path = tmp_path / "probe.keras"
    probe.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    images = np.concatenate([np.asarray(x) for x, _ in _digits(20, start=60).batches(32, 20)])
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(probe(images)),
                               atol=1e-5)
    assert feature_groups(loaded) == feature_groups(probe)  # read from the graph


def test_float32_copy_of_a_mixed_precision_probe_keeps_its_standardisation():
    from kerastl.deploy.convert import float32_copy

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        probe, _ = kerastl.multi_depth_probe(source_model(num_classes=3), _digits(60))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy = float32_copy(probe)  # rebuilt from its config: what TFLite and ONNX convert
    assert copy is not probe
    images = np.concatenate([np.asarray(x) for x, _ in _digits(20, start=60).batches(32, 20)])
    copied, original = np.asarray(copy(images)), np.asarray(probe(images))
    # bfloat16 against float32 arithmetic: close, not equal. A copy that standardised
    # with mean 0 and variance 1 (set_weights alone) was 0.30 off on average.
    assert np.abs(copied - original).mean() < 0.03, np.abs(copied - original).mean()
    assert np.mean(copied.argmax(1) == original.argmax(1)) >= 0.9


def test_extractor_head_and_cache_key_follow_the_probe():
    model = source_model(num_classes=3)
    probe = multi_depth_model(model)
    width = probe.get_layer("predictions").input.shape[-1]
    assert feature_extractor(probe).output.shape == (None, width)
    head = head_model(probe)
    assert head.input_shape == (None, width)
    assert head.kerastl_widths == [w for _, w in feature_groups(probe)]
    assert cache_key(probe, "data", 32) != cache_key(model, "data", 32)
    with pytest.raises(ConfigError, match="already pooled; received pooling='avg'"):
        feature_extractor(probe, pooling="avg")


def test_gradcam_explains_the_last_map_and_says_so():
    probe = multi_depth_model(source_model(num_classes=3, size=64))
    cam = cam_model(probe)
    assert cam.map_shape[:2] == tuple(probe.get_layer("backbone").outputs[-1].shape[1:3])
    assert "earlier depths and the pixels" in cam.explains
    with pytest.raises(ConfigError, match="received layer='expanded_conv_project'"):
        cam_model(probe, "expanded_conv_project")


def _digits_run(tmp_path, train: int, test: int, **config) -> kerastl.RunResult:
    """A multi-depth run on the source backbone: ``train`` digits, then ``test`` more;
    checks that ``model.keras``, loaded in plain Keras, scores what the run says."""
    source = source_backbone()
    digits = load_digits()
    images, labels = (digits.images * 16).astype("uint8"), digits.target
    names = [str(i) for i in range(10)]
    held_out = slice(train, train + test)
    splits = kerastl.DataSplits(
        train=kerastl.from_arrays(images[:train], labels[:train], class_names=names),
        val=None, test=kerastl.from_arrays(images[held_out], labels[held_out],
                                           class_names=names),
        class_names=names)
    result = kerastl.fit(kerastl.RunConfig(
        head="multidepth", backbone=source["backbone"],
        backbone_kwargs=source["backbone_kwargs"], weights=source["weights"],
        image_size=32, verbose=0, output=str(tmp_path / "run"), **config), splits=splits)
    loaded = keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    predicted = np.concatenate([np.asarray(loaded(x)).argmax(1)
                                for x, _ in splits.test.batches(32, 100)])
    assert np.mean(predicted == labels[held_out]) == pytest.approx(
        result.metrics["accuracy"], abs=1e-6)
    return result


def test_frozen_multidepth_run_writes_a_model_that_scores_as_the_run_says(tmp_path):
    result = _digits_run(tmp_path, 300, 200, mode="frozen")
    assert [p.fit for p in result.config.phases] == ["probe"]
    assert result.metrics["accuracy"] > 0.6  # digits: far above chance (0.1); 0.78 measured
    assert "network_accuracy" not in result.metrics  # the probe is the model


def test_auto_fine_tunes_the_network_from_the_multidepth_probe(tmp_path):
    base_before = _weights(source_model(num_classes=10).get_layer("backbone").layers)
    result = _digits_run(tmp_path, 120, 100, mode="auto", epochs=2)
    assert [p.fit for p in result.config.phases] == ["probe", "train"]
    assert result.config.pixel_blend == "on"  # the default recipe: blended with pixels
    # config.yaml (the head with its planned phases) is what --resume and --config
    # replay: it must resolve again, as it was.
    saved = resolve_config(kerastl.RunConfig.from_dict(
        RunDir(result.output_dir).read_config()))
    assert (saved.head, [p.fit for p in saved.phases]) == ("multidepth", ["probe", "train"])
    tuned = _weights(result.model.get_layer("backbone").layers)
    # The same weights in the same order (Keras names some layers by a global counter,
    # so names differ between two builds), and some of them moved.
    assert [w.shape for w in tuned] == [w.shape for w in base_before]
    assert any(not np.array_equal(a, b) for a, b in zip(base_before, tuned, strict=True))
    losses = [row["loss"] for row in result.history]
    # Fine-tuning starts where the probe ended: the head's standardisation is a layer,
    # so Adam's steps on the kernel are in standardised units (folded, the first epochs'
    # loss rose twentyfold on a suite task).
    assert losses[1] < 3 * losses[0] + 0.5, losses


@pytest.mark.parametrize("changes,head", [
    ({}, "multidepth"),  # auto's default with pretrained weights
    ({"head": "avg"}, "avg"),  # a head given is kept
    ({"weights": None}, "avg"),  # trained from scratch: no probe to start from
    ({"mode": "full"}, "avg"),
    ({"dense_units": [16]}, "avg"),
    ({"bn_policy": "train"}, "avg"),
    ({"phases": [kerastl.Phase("head", 1, mode="frozen")]}, "avg"),
    ({"prune": 0.5}, "avg"),
    ({"dropout": 0.5}, "avg"),  # the multi-depth head is one Dense layer: no dropout
    ({"head_norm": "none"}, "avg"),
])
def test_auto_starts_from_the_multidepth_probe_unless_asked_otherwise(changes, head):
    source = source_backbone()
    config = resolve_config(kerastl.RunConfig(**{
        "data": "x", "backbone": source["backbone"], "weights": source["weights"],
        "backbone_kwargs": source["backbone_kwargs"], **changes}))
    assert config.head == head


def test_multidepth_without_pretrained_weights_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="reads every depth of a pretrained base"):
        kerastl.fit(kerastl.RunConfig(mode="auto", head="multidepth", weights=None,
                                      image_size=32, verbose=0, output=str(tmp_path / "r")))


@pytest.mark.parametrize("changes,message", [
    ({"mode": "scratch"}, "needs mode 'frozen'"),
    ({"mode": "full"}, "received head_warmup='train'. Use --head-warmup probe"),
    ({"mode": "auto", "bn_policy": "train"}, "received bn_policy='train'"),
    ({"dense_units": [64]}, "Use --dense-units none"),
    ({"phases": [kerastl.Phase("head", 1, mode="frozen")]}, "begin with a phase of fit='probe'"),
])
def test_config_refuses_what_a_frozen_probe_cannot_be(changes, message):
    from kerastl.config.validation import validate

    config = kerastl.RunConfig(mode="frozen", head="multidepth").replace(**changes)
    with pytest.raises(ConfigError, match=message):
        validate(config)

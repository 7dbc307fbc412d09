"""The pixel blend: a logistic regression on the pixels joined to the network's logits."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import kerastl
from kerastl.recipes.fit import fit
from kerastl.recipes.pixel_blend import (
    GAP_WEIGHT_BASE,
    GAP_WEIGHT_SLOPE,
    PIXEL_C,
    PIXEL_WEIGHT,
    _logits_model,
    _PixelFit,
    blend_applies,
    blend_pixels,
    blended_model,
    choose_blend,
    choose_weight,
    fit_pixel_model,
    weight_from_gap,
)
from kerastl.recipes.resolve import resolve_config

from .conftest import source_backbone, source_model


def _digits(n: int, start: int = 0, classes: int = 3) -> kerastl.ImageData:
    digits = load_digits()
    keep = digits.target < classes
    images = (digits.images[keep] * 16).astype("uint8")[start:start + n]
    return kerastl.from_arrays(images, digits.target[keep][start:start + n],
                               class_names=[str(i) for i in range(classes)])


def _network(classes: int = 3, size: int = 32, task: str = "multiclass") -> keras.Model:
    return kerastl.build_model("MobileNetV2", classes, input_shape=size, weights=None,
                               head="avg", dense_units=(), task=task,
                               backbone_kwargs={"alpha": 0.35})


def _pooled_pixels(data: kerastl.ImageData, size: int, pool: int) -> np.ndarray:
    """The pixels the blend fits on, computed with NumPy from the model's input."""
    images = np.concatenate([np.asarray(x) for x, _ in data.batches(size, 64)])
    n, side = len(images), size // pool
    pooled = images.reshape(n, side, pool, side, pool, 3).mean(axis=(2, 4))
    return pooled.reshape(n, -1) / 255.0


def _probabilities(model, data, size):
    return np.concatenate([np.asarray(model(x, training=False)) for x, _ in
                           data.batches(size, 64)])


@pytest.mark.parametrize("size,pool", [(32, 1), (64, 2)])
def test_blend_of_a_silent_network_predicts_what_scikit_learn_predicts(size, pool):
    # A network whose predictions layer outputs zero logits: the blended model must
    # then give exactly the probabilities of the pixel logistic regression.
    network = _network(size=size)
    dense = network.get_layer("predictions")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    train, test = _digits(60), _digits(30, start=60)
    blended, facts = blend_pixels(network, train, image_size=size, task="multiclass",
                                  weight=1.0)
    assert facts["pool"] == pool and facts["pixels"] == [32, 32, 3]
    reference = LogisticRegression(C=facts["C"], max_iter=2000).fit(
        _pooled_pixels(train, size, pool), train.labels)
    expected = reference.predict_proba(_pooled_pixels(test, size, pool))
    # lbfgs stops within its tolerance: the two fits differ by float round-off only.
    np.testing.assert_allclose(_probabilities(blended, test, size), expected, atol=5e-3)


def test_blend_with_weight_zero_is_the_network():
    network = _network()
    data = _digits(30)
    blended, _ = blend_pixels(network, data, image_size=32, task="multiclass", weight=0.0)
    np.testing.assert_allclose(_probabilities(blended, data, 32),
                               _probabilities(network, data, 32), atol=1e-5)
    # The network's layers are shared, up to the features its predictions layer reads.
    assert blended.get_layer("backbone") is network.get_layer("backbone")
    assert blended.get_layer("head_avg") is network.get_layer("head_avg")


def test_blended_model_loads_with_plain_keras_in_safe_mode(tmp_path):
    network = _network()
    data = _digits(30)
    blended, _ = blend_pixels(network, data, image_size=32, task="multiclass")
    path = tmp_path / "blended.keras"
    blended.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(_probabilities(loaded, data, 32),
                               _probabilities(blended, data, 32), atol=1e-6)
    ok, why = blend_applies(loaded)
    assert not ok and "already blended" in why


@pytest.mark.parametrize("task,classes", [("binary", 1), ("multilabel", 3)])
def test_blend_for_sigmoid_outputs_follows_the_pixels(task, classes):
    network = _network(classes, task=task)
    dense = network.get_layer("predictions")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    base = _digits(90, classes=3)
    if task == "binary":
        labels = (base.labels == 0).astype("int64")
    else:  # the first label varies; the second never does (a constant logit)
        labels = np.stack([base.labels == 0, np.zeros(len(base), bool),
                           base.labels == 2], axis=1).astype("float32")
    data = kerastl.from_arrays(np.asarray(base.images), labels)
    blended, _ = blend_pixels(network, data, image_size=32, task=task)
    probabilities = _probabilities(blended, data, 32)
    truth = labels.reshape(probabilities.shape) > 0.5
    varies = truth.any(axis=0) & ~truth.all(axis=0)
    assert blended.output.shape == network.output.shape
    # training pixels: nearly separable, for every label that varies
    assert np.mean((probabilities >= 0.5)[:, varies] == truth[:, varies]) >= 0.95
    # a label that never varies gets no pixel logit: the (silent) network's 0.5 stays
    np.testing.assert_allclose(probabilities[:, ~varies], 0.5, atol=1e-6)


def test_a_model_that_does_not_end_in_a_dense_predictions_layer_is_refused():
    network = _network()
    wrapped = keras.Model(network.inputs, keras.layers.Activation("linear")(network.output))
    with pytest.raises(kerastl.KerastlError, match="is not the model's output Dense"):
        blend_pixels(wrapped, _digits(10), image_size=32, task="multiclass")


def test_a_class_the_training_images_lack_gets_a_neutral_pixel_logit():
    # The network may know a class the pixel model never saw: the blend must not veto it
    # (a fixed -30 logit times the weight would).
    network = _network(classes=4)
    pixels = fit_pixel_model(network, _digits(60, classes=3), image_size=32,
                             task="multiclass")
    assert not pixels.kernel[:, 3].any()
    assert pixels.bias[3] == pytest.approx(pixels.bias[:3].mean())


@pytest.mark.parametrize("probe_cv,kept", [(1.0, False), (0.0, True)])
def test_without_validation_a_probe_better_than_pixels_leaves_the_blend_out(probe_cv, kept):
    _, weight, facts = choose_blend(_network(), _digits(45), image_size=32,
                                    task="multiclass", probe_cv_accuracy=probe_cv)
    assert 0.0 < facts["pixel_cv_accuracy"] < 1.0  # so that 1.0 is ahead of it, 0.0 behind
    assert (weight > 0) is kept and facts["probe_cv_accuracy"] == probe_cv


def test_the_rule_kerastl_uses_is_the_one_its_benchmark_chose():
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    chosen = json.loads((results / "blend_rule.json").read_text())["rule_chosen"]
    base, slope = (float(part.split("=")[1]) for part in chosen.split(","))
    assert (base, slope) == (GAP_WEIGHT_BASE, GAP_WEIGHT_SLOPE)


@pytest.mark.parametrize("pixel_cv,probe_cv,weight", [(0.9, 0.7, 3.0), (0.8, 0.8, 1.0),
                                                      (None, 0.5, PIXEL_WEIGHT)])
def test_without_validation_the_weight_follows_the_pixel_models_lead(
        monkeypatch, pixel_cv, probe_cv, weight):
    # The pixel model's cross-validated accuracy, pinned: None is a class too small to fold.
    monkeypatch.setattr(_PixelFit, "cv_accuracy", lambda self, C: pixel_cv)
    _, chosen, facts = choose_blend(_network(), _digits(45), image_size=32,
                                    task="multiclass", probe_cv_accuracy=probe_cv)
    assert chosen == facts["weight"] == weight
    assert (facts["pixel_cv_accuracy"], facts["probe_cv_accuracy"]) == (pixel_cv, probe_cv)


def test_pixel_blend_on_with_a_scikit_learn_head_names_the_fix():
    with pytest.raises(kerastl.KerastlError, match="--pixel-blend off"):
        resolve_config(kerastl.RunConfig(head="sklearn-logreg", pixel_blend="on", data="x"))


# ---------------------------------------------------------------- in a run
def _run(tmp_path, name, splits, **values):
    source = source_backbone()
    config = kerastl.RunConfig(**{
        "image_size": 32, "batch_size": 16, "augment": [], "verbose": 0, "seed": 1,
        "output": str(tmp_path / name), "precision": "float32", "epochs": 2,
        "backbone": source["backbone"], "backbone_kwargs": source["backbone_kwargs"],
        "weights": source["weights"], **values})
    return fit(config, splits=splits)


def _splits(val: bool) -> kerastl.DataSplits:
    names = ["0", "1", "2"]
    return kerastl.DataSplits(train=_digits(45), val=_digits(30, start=45) if val else None,
                              test=None, class_names=names)


def test_without_validation_a_run_ends_blended_with_the_defaults(tmp_path):
    result = _run(tmp_path, "on", _splits(val=False), mode="full", pixel_blend="on")
    facts = json.loads((result.output_dir / "run.json").read_text())["pixel_blend"]
    assert facts["kept"] is True and facts["fit_images"] == 45
    assert facts["C"] == PIXEL_C
    assert facts["weight"] == _weight_without_validation(facts)
    blend_note = next(note for note in result.notes if note.startswith("pixel blend:"))
    # No held-out images checked the weight: the note says so and names the fix.
    assert "--val-data DIR" in blend_note and "--pixel-blend off" in blend_note
    assert "--val-split" not in blend_note  # too few images per class here to split
    assert "--val-data DIR" in facts["remedy"]
    saved = kerastl.load_model(result.output_dir / "model.keras", compile=False)
    assert "pixels_flat" in [layer.name for layer in saved.layers]
    assert saved.get_layer("pixel_logits").kernel.shape == (32 * 32 * 3, 3)
    assert not saved.get_layer("pixel_logits").trainable


def test_the_default_run_blends_unless_its_probe_beats_pixels_in_cross_validation(tmp_path):
    result = _run(tmp_path, "auto", _splits(val=False))
    facts = json.loads((result.output_dir / "run.json").read_text())["pixel_blend"]
    assert "pixel_blend: 'on'" in (result.output_dir / "config.yaml").read_text()
    probe_better = facts["probe_cv_accuracy"] > facts["pixel_cv_accuracy"]
    assert facts["kept"] is not probe_better
    assert ("remedy" in facts) is facts["kept"]  # nothing to check in the network alone
    assert ("pixel_logits" in [layer.name for layer in result.model.layers]) is facts["kept"]
    # With pretrained weights, auto fine-tunes from the multi-depth probe.
    assert result.config.head == "multidepth"
    assert facts["weight"] == weight_from_gap(facts["pixel_cv_accuracy"],
                                              facts["probe_cv_accuracy"])
    assert facts["kept"] is (facts["weight"] > 0)


def _weight_without_validation(facts: dict) -> float:
    """The weight a run without validation data must use: graded by the CV lead, or the
    constant where no probe was cross-validated."""
    if facts.get("probe_cv_accuracy") is None or facts.get("pixel_cv_accuracy") is None:
        return PIXEL_WEIGHT
    return weight_from_gap(facts["pixel_cv_accuracy"], facts["probe_cv_accuracy"])


@pytest.mark.parametrize(("pixel_cv", "probe_cv", "weight"), [
    (0.80, 0.81, 0.0),      # the probe is ahead: the network alone
    (0.80, 0.8001, 0.0),    # however little
    (0.80, 0.80, 1.0),      # a tie
    (0.8700000000000001, 0.8699999999999999, 1.0),  # a tie too: equal fold means
    (0.8699999999999999, 0.8700000000000001, 1.0),  # summed in another order
    (0.85, 0.80, 1.0),      # 1.5: halfway, the smaller weight
    (0.92, 0.84, 2.0),
    (0.90, 0.70, 3.0),
    (0.90, 0.50, 4.0),      # capped
])
def test_the_pixel_weight_grows_with_the_pixel_models_cross_validated_lead(
        pixel_cv, probe_cv, weight):
    assert weight_from_gap(pixel_cv, probe_cv) == weight


def test_with_validation_the_run_keeps_the_blend_that_validates_best(tmp_path):
    splits = _splits(val=True)
    result = _run(tmp_path, "val", splits)
    facts = json.loads((result.output_dir / "run.json").read_text())["pixel_blend"]
    scores = facts["val_accuracy_by_C_weight"]
    assert facts["chosen_on"] == "validation" and set(scores) == {"0.1", "1.0", "10.0"}
    assert "remedy" not in facts  # held-out images checked this weight
    best = max(v for by_weight in scores.values() for v in by_weight.values())
    assert facts["val_accuracy"] == best == scores[str(facts["C"])][str(facts["weight"])]
    assert facts["kept"] is (facts["weight"] > 0)
    names = [layer.name for layer in result.model.layers]
    assert ("pixel_logits" in names) is facts["kept"]
    # The score the choice was made on is what the model the run ends with gets.
    probabilities = _probabilities(result.model, splits.val, 32)
    assert np.mean(probabilities.argmax(1) == splits.val.labels) == pytest.approx(
        best, abs=1e-3)


def test_choose_weight_scores_what_the_blended_model_predicts():
    # Pretrained features and a random head: logits far from ties (a random-init base
    # gives features near 1e-12, whose arg-max is float32 round-off).
    network, train, held_out = source_model(3), _digits(45), _digits(45, start=45)
    dense = network.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.random.default_rng(0).normal(size=kernel.shape)
                       .astype("float32"), bias])
    pixels = fit_pixel_model(network, train, image_size=32, task="multiclass")
    logits = pixels.logits(held_out.batches(32, 64))
    network_logits = np.asarray(_logits_model(network).predict(
        np.concatenate([np.asarray(x) for x, _ in held_out.batches(32, 64)]), verbose=0))
    _, scores = choose_weight("multiclass", network_logits, logits, held_out.labels,
                              weights=(0.0, 0.5, 4.0))
    for weight, score in scores.items():
        blended = blended_model(network, pixels, weight)
        accuracy = np.mean(_probabilities(blended, held_out, 32).argmax(1) == held_out.labels)
        assert accuracy == pytest.approx(score, abs=1e-3)


@pytest.mark.parametrize("values", [{"pixel_blend": "off"}, {"mode": "frozen"},
                                    {"phases": [kerastl.Phase("head", 1, mode="frozen")]}])
def test_no_blend_when_turned_off_or_a_regime_or_phases_are_asked_for(tmp_path, values):
    result = _run(tmp_path, "off", _splits(val=False), **values)
    assert json.loads((result.output_dir / "run.json").read_text())["pixel_blend"] is None
    assert "pixel_logits" not in [layer.name for layer in result.model.layers]
    # Resolved once and saved: a resumed run makes the same choice.
    assert "pixel_blend: 'off'" in (result.output_dir / "config.yaml").read_text()

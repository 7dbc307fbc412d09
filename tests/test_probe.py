"""The linear probe: logistic regression written exactly into the model's head."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import kerastl
from kerastl.models.build import head_model
from kerastl.models.linear_probe import _predictions_inputs, fit_probe, probe_applies


def _features(n_classes: int, n: int = 90, width: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    centres = rng.normal(size=(n_classes, width))
    features = centres[labels] + rng.normal(scale=1.5, size=(n, width))
    return features.reshape(n, 1, 1, width).astype("float32"), labels


def _head(n_classes: int, task: str = "multiclass", head_norm: str = "layer"):
    model = kerastl.build_model("MobileNetV2", n_classes, input_shape=32, weights=None,
                                head="avg", dense_units=(), task=task, head_norm=head_norm,
                                backbone_kwargs={"alpha": 0.35})
    base_width = model.get_layer("backbone").output.shape[-1]
    return model, head_model(model), base_width


@pytest.mark.parametrize("head_norm", ["layer", "none"])
def test_head_predicts_what_the_fitted_logistic_regression_predicts(head_norm):
    model, head, width = _head(4, head_norm=head_norm)
    features, labels = _features(4, width=width)
    facts = fit_probe(head, features, labels, task="multiclass", label_smoothing=0.1)
    # The same regression, fitted independently with scikit-learn.
    inputs = _predictions_inputs(head, features)
    scaled = StandardScaler().fit(inputs)
    reference = LogisticRegression(C=facts["C"], max_iter=5000, random_state=0)
    reference.fit(scaled.transform(inputs), labels)
    keras_classes = np.asarray(head.predict(features, verbose=0)).argmax(axis=1)
    agreement = np.mean(keras_classes == reference.predict(scaled.transform(inputs)))
    assert agreement >= 0.97  # the two solvers stop at slightly different points
    assert facts["train_accuracy"] == pytest.approx(np.mean(keras_classes == labels), abs=0.02)
    assert model.get_layer("predictions") is head.get_layer("predictions")


def test_logit_scale_minimises_the_smoothed_training_loss():
    _, head, width = _head(3)
    features, labels = _features(3, width=width)
    facts = fit_probe(head, features, labels, task="multiclass", label_smoothing=0.1)
    probs = np.asarray(head.predict(features, verbose=0))
    target = np.full_like(probs, 0.1 / 3)
    target[np.arange(len(labels)), labels] += 0.9
    losses = {}
    for factor in (0.8, 1.0, 1.25):
        logits = np.log(probs) * factor
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses[factor] = float(-(target * log_p).sum(axis=1).mean())
    assert losses[1.0] <= min(losses[0.8], losses[1.25]) + 1e-6
    assert facts["temperature"] > 0


@pytest.mark.parametrize("task, n_outputs", [("binary", 1), ("multilabel", 3)])
def test_sigmoid_heads_are_probed_per_output(task, n_outputs):
    _, head, width = _head(2 if task == "binary" else 3, task=task)
    features, classes = _features(2 if task == "binary" else 3, width=width)
    labels = classes if task == "binary" else np.eye(3)[classes]
    fit_probe(head, features, labels, task=task)
    predicted = np.asarray(head.predict(features, verbose=0)) > 0.5
    assert predicted.shape == (len(features), n_outputs)
    assert np.mean(predicted.reshape(labels.shape) == labels.astype(bool)) > 0.8


def test_probe_refuses_a_head_with_hidden_layers():
    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                dense_units=(16,), backbone_kwargs={"alpha": 0.35})
    ok, why = probe_applies(model)
    assert not ok and "head_dense_1" in why
    with pytest.raises(kerastl.ConfigError, match="hidden Dense"):
        fit_probe(head_model(model), np.zeros((4, 1, 1, 1280), "float32"), np.arange(4) % 3,
                  task="multiclass")

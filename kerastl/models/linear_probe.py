"""A linear probe written into the model's own head (the "LP" of LP-FT).

Fitting a new, randomly initialised head with gradient steps while the base is
frozen is slow on small data and, once the base is unfrozen, a head that is still
poor sends large gradients into the pretrained features and distorts them (Kumar et
al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022: linear probe, then
fine-tune, beats either alone). A logistic regression on the frozen features is
convex, takes seconds on cached features, and its optimum can be written exactly
into the model's ``predictions`` layer: standardisation folded into the kernel and
bias, or set in a ``Normalization`` layer just before it where the head has one (the
multi-depth head). The model stays an ordinary kerastl model; fine-tuning starts from that head.

Example:
    >>> import numpy as np, kerastl
    >>> from kerastl.models.build import head_model
    >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None, head="avg",
    ...                             dense_units=())
    >>> head = head_model(model)
    >>> features = np.random.default_rng(0).normal(size=(20, 1, 1, 512)).astype("float32")
    >>> facts = fit_probe(head, features, np.arange(20) % 2, task="multiclass")
    >>> facts["C"] > 0
    True
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import keras  # noqa: E402
import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.backend import single_threaded_blas
from ..core.errors import ConfigError

PREDICTIONS_LAYER = "predictions"
# Inverse regularisation strengths tried by cross-validation (on standardised
# features), and the one used when a class has too few images to cross-validate.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# The grid for grouped features (a multi-depth probe): each standardised group is scaled
# by 1/sqrt(width), so each feature is small and less regularisation fits. On the
# suite's validation images the chosen C spread over 0.3-100 from task to task.
GROUPED_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
# Grouped features are standardised with each std floored at this fraction of its
# group's median std (sqrt(std**2 + floor**2)). Why: a feature almost constant on the
# training images (a digit's blank border, a dead channel) gets a huge weight once divided
# by its tiny std. A frozen probe never sees it move; fine-tuning the multi-depth head
# does, and without a floor its loss reached the thousands (suite task T8). Exploratory
# single runs on the suite's validation images (seed 0, --mode auto --head multidepth):
# no floor T8 0.606, T2 0.728; 0.3 0.958, 0.860; 1.0 0.954, 0.848 (0.3 and 1.0 are
# within run-to-run noise of each other; no floor is not).
GROUP_STD_FLOOR = 0.3
FALLBACK_C = 0.1
MIN_PER_CLASS_FOR_CV = 3


def probe_applies(model: keras.Model) -> tuple[bool, str]:
    """Whether a linear probe can be written into this model's head.

    Only a linear head qualifies (no hidden Dense layers between the pooled
    features and ``predictions``).
    """
    dense = [layer.name for layer in _head_chain(model) if isinstance(layer, keras.layers.Dense)]
    if dense:
        return False, (f"the head has hidden Dense layers {dense}; a linear probe fits a "
                       "linear head only (use --dense-units none)")
    return True, "linear head"


def fit_probe(head: keras.Model, features: np.ndarray, labels: np.ndarray, *, task: str,
              class_weight: str = "none", seed: int = 0,
              label_smoothing: float = 0.0, group_widths: Sequence[int] | None = None,
              c_grid: Sequence[float] | None = None) -> dict[str, Any]:
    """Fit logistic regression on what ``predictions`` sees, and write it into the head.

    Args:
        head: keras.Model. From :func:`kerastl.models.build.head_model` (base output in).
        features: array. Base outputs of the training images (cached features).
        labels: array. Class ids ``(n,)`` (multiclass, binary) or multi-hot rows.
        task: str. ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        class_weight: str. ``"none"`` or ``"balanced"``.
        seed: int. Seeds the solver and the cross-validation folds.
        label_smoothing: float. Of the loss fine-tuning will use: the probe's logits
            are rescaled (same predictions) to minimise that loss on the training
            features, so the first fine-tuning steps do not start by shrinking
            over-confident logits.
        group_widths: sequence of int, optional. The features come in groups of these
            widths (the depths of :mod:`kerastl.models.multi_depth`): each standardised
            group is also scaled by ``1/sqrt(width)``, so every group carries the same
            total variance whatever its width. Defaults to the head's
            ``kerastl_widths`` (:func:`kerastl.models.build.head_model` of a multi-depth
            probe), else one group per feature.
        c_grid: sequence of float, optional. Inverse L2 strengths tried by
            cross-validation. Defaults to ``GROUPED_C_GRID`` for grouped features, else
            ``C_GRID``.

    Returns:
        ``{"C": chosen C, "cv_accuracy": mean fold accuracy or None, "train_accuracy",
        "temperature"}``.
    """
    ok, why = probe_applies(head)
    if not ok:
        raise ConfigError(f"A linear probe does not apply: {why}.")
    standardiser = _standardiser(head)
    inputs = _predictions_inputs(head, features, skip=standardiser)
    group_widths = group_widths or getattr(head, "kerastl_widths", None)
    c_grid = c_grid or (GROUPED_C_GRID if group_widths else C_GRID)
    mean, std = inputs.mean(axis=0), inputs.std(axis=0) + 1e-6
    if group_widths is not None:
        sqrt_widths = _group_sqrt_widths(group_widths, inputs.shape[1])  # checks widths
        std = _floored_by_group(std, group_widths) * sqrt_widths
    standardised = (inputs - mean) / std
    weights = None if class_weight == "none" else "balanced"
    labels = np.asarray(labels)
    columns = [labels[:, j] for j in range(labels.shape[1])] if task == "multilabel" else [
        labels.reshape(-1)]
    with single_threaded_blas():
        fitted = [_fit_logistic(standardised, y, weights, seed, tuple(c_grid)) for y in columns]
    dense = head.get_layer(PREDICTIONS_LAYER)
    kernel, bias = logistic_kernel_and_bias(fitted, task, len(mean), int(dense.units))
    scale = _logit_scale(standardised @ kernel + bias, labels, task, label_smoothing)
    kernel, bias = kernel * scale, bias * scale
    if standardiser is not None:  # the head's own Normalization layer standardises
        _set_standardisation(standardiser, mean, std)
    else:
        # Fold the standardisation in: w.(x - m)/s + b = (w/s).x + (b - (w/s).m).
        kernel = kernel / std[:, None]
        bias = bias - mean @ kernel
    dense.kernel.assign(kernel.astype(np.float32))
    dense.bias.assign(bias.astype(np.float32))
    scores = [f["cv_accuracy"] for f in fitted if f["cv_accuracy"] is not None]
    return {"C": float(np.median([f["C"] for f in fitted])),
            "cv_accuracy": float(np.mean(scores)) if scores else None,
            "train_accuracy": float(np.mean([f["train_accuracy"] for f in fitted])),
            "temperature": float(1.0 / scale)}


def _floored_by_group(std: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """``std`` with each value floored at ``GROUP_STD_FLOOR`` x its group's median."""
    floored = std.copy()
    for start, end in itertools.pairwise(np.cumsum([0, *map(int, widths)])):
        floor = GROUP_STD_FLOOR * np.median(std[start:end])
        floored[start:end] = np.sqrt(std[start:end] ** 2 + floor ** 2)
    return floored


def _set_standardisation(layer: keras.layers.Normalization, mean: np.ndarray,
                         std: np.ndarray) -> None:
    """Write ``(x - mean) / std`` into an adapt-style Normalization layer."""
    layer.adapt_mean.assign(mean.astype(np.float32))
    layer.adapt_variance.assign((std ** 2).astype(np.float32))
    layer.finalize_state()  # what Keras's own adapt() ends with


def _group_sqrt_widths(widths: Sequence[int], features: int) -> np.ndarray:
    """``sqrt(width)`` of each feature's group, checked against the feature count."""
    scale = np.concatenate([np.full(int(w), np.sqrt(int(w))) for w in widths])
    if len(scale) != features:
        raise ConfigError(f"The feature groups add up to {len(scale)} features "
                          f"({list(widths)}); the features have {features}.")
    return scale


def _logit_scale(logits: np.ndarray, labels: np.ndarray, task: str,
                 label_smoothing: float) -> float:
    """The factor of the logits that minimises the training loss (golden-section search)."""
    if task == "multiclass":
        n = logits.shape[1]
        targets = np.eye(n)[labels.reshape(-1).astype(np.int64)]
        targets = targets * (1 - label_smoothing) + label_smoothing / n

        def loss(scale: float) -> float:
            z = logits * scale
            z = z - z.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            return float(-(targets * log_p).sum(axis=1).mean())
    else:
        targets = labels.reshape(logits.shape).astype(np.float64)
        targets = targets * (1 - label_smoothing) + label_smoothing / 2

        def loss(scale: float) -> float:
            z = logits * scale
            return float(np.mean(np.logaddexp(0, z) - targets * z))

    low, high = np.log(1e-3), np.log(10.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(np.exp(a)) < loss(np.exp(b)):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def _head_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The head's layers between the base output and ``predictions``, in order."""
    names = [layer.name for layer in model.layers]
    start = names.index("backbone") + 1 if "backbone" in names else 1
    end = names.index(PREDICTIONS_LAYER)
    return [layer for layer in model.layers[start:end]
            if not isinstance(layer, keras.layers.InputLayer)]


def _standardiser(head: keras.Model) -> keras.layers.Normalization | None:
    """The Normalization layer right before ``predictions`` (dropout aside), if any.

    A multi-depth head keeps its standardisation there instead of folding it into the
    kernel: fine-tuning then moves the kernel in standardised units, as the regression
    was fitted. Folded, a weight on pixels (values up to 255, their 768 inputs scaled
    by 1/sqrt(768)) is thousands of times smaller than on a deep feature, and Adam's
    steps, about the learning rate whatever a weight's size, swamped it: the loss went
    from 0.5 to 10 in the first fine-tuning epochs (suite task T4).
    """
    for layer in reversed(_head_chain(head)):
        if isinstance(layer, keras.layers.Normalization):  # adapt-style only
            return layer if layer.input_mean is None and not layer.invert else None
        if not isinstance(layer, keras.layers.Dropout):
            return None
    return None


def _predictions_inputs(head: keras.Model, features: np.ndarray,
                        skip: keras.layers.Layer | None = None) -> np.ndarray:
    """Run the head's chain (pooling, normalisation) in inference mode, in batches;
    ``skip``: a layer left out (the standardisation this fit is about to set)."""
    outputs = []
    for start in range(0, len(features), 512):
        x = features[start:start + 512]
        for layer in _head_chain(head):
            if layer is skip:
                continue
            x = layer(x, training=False)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64))
    return np.concatenate(outputs)


def stratified_folds(y: np.ndarray, seed: int):
    """Up to 5 shuffled stratified folds of class ids ``y``, or None when a class has
    fewer than ``MIN_PER_CLASS_FOR_CV`` images (or only one class is present)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(y, np.int64))
    counts = counts[counts > 0]
    if len(counts) < 2 or counts.min() < MIN_PER_CLASS_FOR_CV:
        return None
    return StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True,
                           random_state=seed)


def _fit_logistic(x: np.ndarray, y: np.ndarray, class_weight, seed: int,
                  c_grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    y = y.astype(np.int64)
    best_c, best_score = FALLBACK_C, None
    folds = stratified_folds(y, seed)
    if folds is not None:
        for c in c_grid:
            model = LogisticRegression(C=c, max_iter=2000, class_weight=class_weight,
                                       random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs convergence on tiny folds
                score = float(np.mean(cross_val_score(model, x, y, cv=folds)))
            if best_score is None or score > best_score + 1e-9:
                best_c, best_score = c, score
    final = LogisticRegression(C=best_c, max_iter=5000, class_weight=class_weight,
                               random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final.fit(x, y)
    return {"model": final, "C": best_c, "cv_accuracy": best_score,
            "train_accuracy": float(final.score(x, y))}


def logistic_kernel_and_bias(fitted: list[dict], task: str, width: int,
                             outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ``(width, outputs)`` and bias of scikit-learn logistic regressions.

    ``fitted`` holds one ``{"model": LogisticRegression}`` per output column for
    ``multilabel`` and one in all for ``multiclass``/``binary``, as this module and
    :mod:`kerastl.recipes.pixel_blend` fit them; the result is what a Dense ``predictions`` layer
    of that task computes before its activation.
    """
    if task == "multilabel":
        columns = [_binary_weights(f["model"], width) for f in fitted]
        return np.stack([c[0] for c in columns], axis=1), np.array([c[1] for c in columns])
    model = fitted[0]["model"]
    if task == "binary":
        kernel, bias = _binary_weights(model, width)
        return kernel[:, None], np.array([bias])
    # Softmax logits: sklearn stores one row per class it saw (one row for two classes:
    # the second class's logit against the first). Classes it never saw get a
    # logit far below the others.
    kernel, bias = np.zeros((width, outputs)), np.full(outputs, -30.0)
    classes = model.classes_.astype(np.int64)
    if len(classes) == 2 and model.coef_.shape[0] == 1:
        kernel[:, classes[1]] = model.coef_[0]
        bias[classes] = [0.0, model.intercept_[0]]
    else:
        kernel[:, classes] = model.coef_.T
        bias[classes] = model.intercept_
    return kernel, bias


def _binary_weights(model, width: int) -> tuple[np.ndarray, float]:
    if len(model.classes_) == 1:  # one label value only: a constant logit
        sign = 1.0 if model.classes_[0] == 1 else -1.0
        return np.zeros(width), 10.0 * sign
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])

"""Reports: evaluation metrics, confusion matrix, training curves, history CSV, run summary.

Every file is written atomically through :mod:`kerastl.core.files`, so a crash or
Ctrl-C mid-write leaves the previous file intact and never a half-written one.
Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through
pyplot's global state, so a notebook keeps whatever backend it chose.

Metrics come from scikit-learn (``classification_report``, ``confusion_matrix``,
``accuracy_score``); this module only shapes predictions into labels and the results
into JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    multilabel_confusion_matrix,
)

from ..config.choices import TASKS
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_write_json, atomic_write_text, save_figure

# Keras names the accuracy metric after the loss when compiled with a specific
# metric object; the curves accept whichever one the history holds.
ACCURACY_KEYS = (
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
)

# Beyond this many classes the per-cell counts are unreadable; the counts stay in
# metrics.json.
MAX_ANNOTATED_CLASSES = 30


# --------------------------------------------------------------------------- metrics


def classification_metrics(
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str],
    *,
    task: str = "multiclass",
    threshold: float = 0.5,
) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    Predictions are the arg-max class (``"multiclass"``) or ``y_prob >= threshold``
    (``"binary"``, ``"multilabel"``). Numbers are scikit-learn's; classes never
    predicted get precision 0 rather than a warning.

    Args:
        y_true: array-like. ``"multiclass"``: integer labels ``(N,)`` or one-hot
            ``(N, C)``. ``"binary"``: 0/1 labels ``(N,)`` or ``(N, 1)``.
            ``"multilabel"``: multi-hot ``(N, C)``.
        y_prob: array-like. Model outputs: softmax ``(N, C)``, one sigmoid
            ``(N, 1)`` or ``(N,)``, or ``C`` sigmoids ``(N, C)``.
        class_names: sequence of str. One name per class; for ``"binary"`` the
            negative then the positive class.
        task: str. ``"multiclass"``, ``"binary"`` or ``"multilabel"``, as given to
            ``build_model``. Defaults to ``"multiclass"``.
        threshold: float. Sigmoid cut-off for ``"binary"`` and ``"multilabel"``.
            Defaults to 0.5.

    Returns:
        A JSON-ready dict: ``task``, ``class_names``, ``n_examples``, ``accuracy``
        (subset accuracy for multilabel, which adds the per-label
        ``label_accuracy``), ``per_class`` (name -> ``precision``,
        ``recall``, ``f1``, ``support``), ``macro_avg`` and ``weighted_avg`` (plus
        ``micro_avg`` and ``samples_avg`` for multilabel), ``confusion_matrix``
        (rows true, columns predicted; for multilabel one ``[[tn, fp], [fn, tp]]``
        per class) and ``threshold`` unless multiclass.

    Raises:
        ConfigError: unknown ``task`` or a threshold outside (0, 1).
        DataError: shapes, class count or label values that do not match.

    Example:
        >>> m = classification_metrics([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
        ...                            ["cat", "dog"])
        >>> round(m["accuracy"], 3), m["confusion_matrix"]
        (0.667, [[1, 0], [1, 1]])
    """
    _check_task(task, threshold)
    class_names = _check_class_names(class_names, task)
    labels, predictions = _labels_and_predictions(y_true, y_prob, len(class_names), task, threshold)
    report = classification_report(
        labels,
        predictions,
        labels=list(range(len(class_names))),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    metrics: dict[str, Any] = {
        "task": task,
        "class_names": class_names,
        "n_examples": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "per_class": {name: _scores(report[name]) for name in class_names},
    }
    if task == "multilabel":  # per label, where "accuracy" needs every label right
        metrics["label_accuracy"] = float(np.mean(labels == predictions))
    for key, value in report.items():
        if key.endswith(" avg"):
            metrics[key.replace(" ", "_")] = _scores(value)
    metrics["confusion_matrix"] = _confusion(labels, predictions, len(class_names), task)
    if task != "multiclass":
        metrics["threshold"] = float(threshold)
    return metrics


def classification_text(
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str],
    *,
    task: str = "multiclass",
    threshold: float = 0.5,
    digits: int = 4,
) -> str:
    """scikit-learn's text classification report for the same predictions.

    Args:
        y_true: array-like. As for ``classification_metrics``.
        y_prob: array-like. As for ``classification_metrics``.
        class_names: sequence of str. As for ``classification_metrics``.
        task: str. As for ``classification_metrics``. Defaults to ``"multiclass"``.
        threshold: float. As for ``classification_metrics``. Defaults to 0.5.
        digits: int. Decimal places. Defaults to 4.

    Returns:
        The report as printed by ``sklearn.metrics.classification_report``.

    Example:
        >>> print(classification_text([0, 1], [[0.9, 0.1], [0.2, 0.8]], ["cat", "dog"]))
        ... # doctest: +ELLIPSIS
                      precision ...
    """
    _check_task(task, threshold)
    class_names = _check_class_names(class_names, task)
    labels, predictions = _labels_and_predictions(y_true, y_prob, len(class_names), task, threshold)
    return classification_report(
        labels,
        predictions,
        labels=list(range(len(class_names))),
        target_names=class_names,
        digits=digits,
        zero_division=0,
    )


def write_evaluation(
    output_dir: str | os.PathLike,
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str],
    *,
    task: str = "multiclass",
    loss: float | None = None,
    prefix: str = "",
    threshold: float = 0.5,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Write ``metrics.json``, ``classification_report.txt`` and ``confusion_matrix.png``.

    Args:
        output_dir: str or PathLike. Directory for the three files; created if missing.
        y_true: array-like. As for ``classification_metrics``.
        y_prob: array-like. As for ``classification_metrics``.
        class_names: sequence of str. As for ``classification_metrics``.
        task: str. As for ``classification_metrics``. Defaults to ``"multiclass"``.
        loss: float, optional. Loss from ``model.evaluate``, recorded as ``loss``.
            Defaults to None (not recorded).
        prefix: str. Prepended to every file name, e.g. ``"test_"`` gives
            ``test_metrics.json``. Defaults to ``""``.
        threshold: float. As for ``classification_metrics``. Defaults to 0.5.
        extra: mapping, optional. More entries for ``metrics.json`` (e.g. other
            losses and the definitions of the numbers). Defaults to None.

    Returns:
        The metrics dict written to ``metrics.json`` (``loss`` first when given).

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> m = write_evaluation(out, [0, 1], [[0.9, 0.1], [0.2, 0.8]], ["cat", "dog"], loss=0.1)
        >>> sorted(p.name for p in Path(out).iterdir())
        ['classification_report.txt', 'confusion_matrix.png', 'metrics.json']
    """
    metrics = classification_metrics(y_true, y_prob, class_names, task=task, threshold=threshold)
    if loss is not None:
        metrics = {"loss": float(loss), **metrics}
    metrics.update(extra or {})
    text = classification_text(y_true, y_prob, class_names, task=task, threshold=threshold)
    output_dir = Path(output_dir)
    atomic_write_json(output_dir / f"{prefix}metrics.json", metrics)
    atomic_write_text(output_dir / f"{prefix}classification_report.txt", text)
    save_figure(_confusion_figure(metrics), output_dir / f"{prefix}confusion_matrix.png")
    return metrics


def _check_task(task: str, threshold: float) -> None:
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}; received task={task!r}.")
    if not 0.0 < float(threshold) < 1.0:
        raise ConfigError(
            f"threshold must be between 0 and 1 (exclusive); received threshold={threshold!r}."
        )


def _check_class_names(class_names: Sequence[str], task: str) -> list[str]:
    if isinstance(class_names, str):
        raise DataError(
            f"class_names must be a list of names; received the string {class_names!r}."
        )
    names = [str(name) for name in class_names]
    if task == "binary" and len(names) != 2:
        raise DataError(
            f"task='binary' needs two class names (negative, positive); received {names!r}."
        )
    if task == "multiclass" and len(names) < 2:
        raise DataError(
            f"task='multiclass' needs at least two class names; received {names!r}. "
            "Use task='binary' with [negative, positive] names for one sigmoid output."
        )
    if not names or len(set(names)) != len(names):
        raise DataError(f"class_names must be non-empty and unique; received {names!r}.")
    return names


def _labels_and_predictions(
    y_true: Any, y_prob: Any, num_classes: int, task: str, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if len(y_prob) == 0 or len(y_true) != len(y_prob):
        raise DataError(
            "y_true and y_prob must hold the same, non-zero number of examples; received "
            f"y_true shape {y_true.shape} and y_prob shape {y_prob.shape}."
        )
    if not np.all(np.isfinite(y_prob)):
        raise DataError(
            f"y_prob holds {int(np.sum(~np.isfinite(y_prob)))} NaN or Inf values; the model "
            "diverged or its inputs are broken. Check the training loss before evaluating."
        )
    if task == "multiclass":
        return _multiclass(y_true, y_prob, num_classes)
    if task == "binary":
        return _binary(y_true, y_prob, threshold)
    return _multilabel(y_true, y_prob, num_classes, threshold)


def _multiclass(y_true, y_prob, num_classes):
    if y_prob.shape[1:] != (num_classes,):
        raise DataError(
            f"task='multiclass' with {num_classes} class names needs y_prob of shape "
            f"(N, {num_classes}); received {y_prob.shape}."
        )
    if y_true.ndim == 2 and y_true.shape[1] == num_classes:
        y_true = y_true.argmax(axis=1)  # one-hot labels, as categorical_crossentropy uses
    labels = _integer_labels(y_true.reshape(len(y_true), -1), "y_true")
    if labels.shape[1] != 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"task='multiclass' needs y_true as labels 0..{num_classes - 1} of shape (N,) or "
            f"one-hot (N, {num_classes}); received shape {y_true.shape}, values "
            f"{np.unique(y_true)[:10].tolist()}."
        )
    return labels[:, 0], y_prob.argmax(axis=1)


def _binary(y_true, y_prob, threshold):
    if y_prob.ndim > 2 or y_prob.reshape(len(y_prob), -1).shape[1] != 1:
        raise DataError(
            "task='binary' needs one sigmoid output per example, y_prob of shape (N,) or "
            f"(N, 1); received {y_prob.shape}. For a two-unit softmax use task='multiclass'."
        )
    labels = _integer_labels(y_true.reshape(len(y_true), -1), "y_true")
    if labels.shape[1] != 1 or not np.isin(labels, (0, 1)).all():
        raise DataError(
            "task='binary' needs y_true of 0/1 labels, shape (N,) or (N, 1); received shape "
            f"{y_true.shape}, values {np.unique(y_true)[:10].tolist()}."
        )
    return labels[:, 0], (y_prob.reshape(-1) >= threshold).astype(int)


def _multilabel(y_true, y_prob, num_classes, threshold):
    expected = (len(y_prob), num_classes)
    if y_prob.shape != expected or y_true.shape != expected:
        raise DataError(
            f"task='multilabel' with {num_classes} class names needs y_true and y_prob of "
            f"shape {expected}; received {y_true.shape} and {y_prob.shape}."
        )
    labels = _integer_labels(y_true, "y_true")
    if not np.isin(labels, (0, 1)).all():
        raise DataError(
            "task='multilabel' needs multi-hot y_true (0/1 per class); received values "
            f"{np.unique(y_true)[:10].tolist()}."
        )
    return labels, (y_prob >= threshold).astype(int)


def _integer_labels(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype.kind not in "biuf" or (
        values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0)
    ):
        raise DataError(
            f"{name} must hold integer class labels; received dtype {values.dtype} with "
            f"values {np.unique(values)[:10].tolist()}. Map class names to indices first."
        )
    return values.astype(int)


def _scores(entry: Mapping[str, float]) -> dict[str, float | int]:
    return {
        "precision": float(entry["precision"]),
        "recall": float(entry["recall"]),
        "f1": float(entry["f1-score"]),
        "support": int(entry["support"]),
    }


def _confusion(labels, predictions, num_classes, task) -> list:
    if task == "multilabel":
        return multilabel_confusion_matrix(labels, predictions).tolist()
    return confusion_matrix(labels, predictions, labels=list(range(num_classes))).tolist()


# --------------------------------------------------------------------------- figures


def _confusion_figure(metrics: Mapping[str, Any]) -> Figure:
    names = metrics["class_names"]
    matrix = np.asarray(metrics["confusion_matrix"])
    if metrics["task"] == "multilabel":
        return _multilabel_confusion_figure(matrix, names)
    side = min(4.0 + 0.45 * len(names), 24.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(
        ax=ax,
        cmap="Blues",
        xticks_rotation=45 if len(names) > 3 else "horizontal",
        include_values=len(names) <= MAX_ANNOTATED_CLASSES,
        values_format="d",
    )
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"Confusion matrix ({metrics['n_examples']} examples)")
    return fig


def _multilabel_confusion_figure(matrices: np.ndarray, names: list[str]) -> Figure:
    # One 2x2 matrix per label: a C x C matrix means nothing when labels co-occur.
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    for i, (name, matrix) in enumerate(zip(names, matrices, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ConfusionMatrixDisplay(matrix, display_labels=["no", "yes"]).plot(
            ax=ax, cmap="Blues", colorbar=False, values_format="d"
        )
        ax.set_title(name)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
    return fig


# --------------------------------------------------------------------------- history


# --------------------------------------------------------------------------- summary

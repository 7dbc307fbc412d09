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

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
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

# Columns a reader looks for first; any other logged key follows in first-seen order.
HISTORY_COLUMNS = ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_accuracy")

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


def write_history_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write per-epoch rows to CSV atomically, one column per key any row has.

    Columns come in a stable order: those of ``HISTORY_COLUMNS`` that occur
    (``epoch, phase, lr, loss, accuracy, val_loss, val_accuracy``), then every other
    key in first-seen order. A key missing from a row is an empty cell.

    Args:
        rows: iterable of mappings. One per epoch, e.g. Keras ``logs`` plus
            ``epoch``, ``phase`` and ``lr``.
        path: str or PathLike. Destination CSV.

    Returns:
        The destination as a ``Path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "history.csv"
        >>> _ = write_history_csv([{"loss": 0.7, "epoch": 1, "phase": "frozen"}], p)
        >>> p.read_text().splitlines()
        ['epoch,phase,loss', '1,frozen,0.7']
    """
    rows = [dict(row) for row in rows]
    seen = dict.fromkeys(key for row in rows for key in row)
    columns = [key for key in HISTORY_COLUMNS if key in seen]
    columns += [key for key in seen if key not in HISTORY_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_cell(value) for key, value in row.items()} for row in rows)
    return atomic_write_text(path, buffer.getvalue())


def read_history_csv(path: str | os.PathLike) -> list[dict]:
    """Read a history CSV back into rows, with numbers as numbers.

    A column whose cells all parse as integers becomes ``int``, else as floats
    ``float``, else it stays ``str``; empty cells become ``None``.

    Args:
        path: str or PathLike. A CSV written by ``write_history_csv``.

    Returns:
        A list of dicts, one per epoch, each with every column.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "history.csv"
        >>> _ = write_history_csv([{"epoch": 1, "loss": 0.5}, {"epoch": 2}], p)
        >>> read_history_csv(p)
        [{'epoch': 1, 'loss': 0.5}, {'epoch': 2, 'loss': None}]
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    parsers = {column: _column_parser([row[column] for row in rows]) for column in columns}
    return [
        {column: parsers[column](row[column]) if row[column] else None for column in columns}
        for row in rows
    ]


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)  # shortest form that parses back to the same float
    return value


def _column_parser(cells: list[str]) -> Callable[[str], Any]:
    filled = [cell for cell in cells if cell]
    for parser in (int, float):
        try:
            for cell in filled:
                parser(cell)
        except ValueError:
            continue
        return parser
    return str


def plot_curves(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | str | os.PathLike,
    path: str | os.PathLike,
    *,
    phase_boundaries: Sequence[tuple[int, str]] | None = None,
) -> Path:
    """Draw loss and accuracy per epoch, train and validation, with phase starts marked.

    Args:
        history: per-epoch rows (as for ``write_history_csv``), a Keras
            ``History.history`` dict of lists, or the path of a history CSV.
        path: str or PathLike. Destination PNG.
        phase_boundaries: sequence of ``(epoch, label)``, optional. A dashed line is
            drawn half an epoch before ``epoch`` (between the two phases' points) and
            labelled. Defaults to None: one line wherever the rows' ``phase`` changes,
            none without a ``phase`` column. Pass ``[]`` for no lines.

    Returns:
        The destination as a ``Path``.

    Raises:
        DataError: the history has no epochs, or no ``loss``.
        ConfigError: a boundary is not an ``(epoch, label)`` pair.

    Example:
        >>> import tempfile, pathlib
        >>> rows = [{"epoch": e, "loss": 1 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]
        >>> p = plot_curves(rows, pathlib.Path(tempfile.mkdtemp()) / "curves.png",
        ...                 phase_boundaries=[(1, "frozen"), (3, "finetune")])
        >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    rows = _history_rows(history)
    boundaries = _phase_starts(rows) if phase_boundaries is None else phase_boundaries
    return save_figure(_curves_figure(rows, _check_boundaries(boundaries)), path)


def _history_rows(history) -> list[Mapping[str, Any]]:
    if isinstance(history, (str, os.PathLike)):
        rows = read_history_csv(history)
    elif isinstance(history, Mapping):  # Keras History.history: column name -> values
        length = max((len(values) for values in history.values()), default=0)
        rows = [
            {key: values[i] if i < len(values) else None for key, values in history.items()}
            for i in range(length)
        ]
    else:
        rows = list(history)
    if not rows or not any(row.get("loss") is not None for row in rows):
        raise DataError(
            f"The history needs at least one epoch with a 'loss'; received {len(rows)} rows"
            + (f" with keys {sorted(rows[0])}." if rows else ".")
        )
    return rows


def _phase_starts(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    starts, previous = [], None
    for x, row in zip(_epochs(rows), rows, strict=True):
        phase = row.get("phase")
        if phase is not None and phase != previous:
            starts.append((x, str(phase)))
        previous = phase
    return starts


def _check_boundaries(boundaries: Sequence[tuple[int, str]]) -> list[tuple[float, str]]:
    checked = []
    for boundary in boundaries:
        try:
            epoch, label = boundary
            checked.append((float(epoch), str(label)))
        except (TypeError, ValueError):
            raise ConfigError(
                "phase_boundaries must be (epoch, label) pairs such as [(1, 'frozen'), "
                f"(6, 'finetune')]; received {boundary!r} in {list(boundaries)!r}."
            ) from None
    return checked


def _epochs(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    if all(row.get("epoch") is not None for row in rows):
        return [float(row["epoch"]) for row in rows]
    return [float(i) for i in range(1, len(rows) + 1)]


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    # NaN leaves a gap in the line where an epoch did not log this key.
    return [math.nan if row.get(key) in (None, "") else float(row[key]) for row in rows]


def _curves_figure(
    rows: Sequence[Mapping[str, Any]], boundaries: Sequence[tuple[float, str]]
) -> Figure:
    epochs = _epochs(rows)
    keys = {key for row in rows for key in row}
    accuracy = next((key for key in ACCURACY_KEYS if key in keys), None)
    fig = Figure(figsize=(11, 4), layout="constrained")
    panels = fig.subplots(1, 2)
    for ax, key, title in ((panels[0], "loss", "Loss"), (panels[1], accuracy, "Accuracy")):
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        if key is None:
            ax.text(0.5, 0.5, "no accuracy logged", ha="center", transform=ax.transAxes)
            continue
        for name, style in ((key, "-o"), (f"val_{key}", "--s")):
            if name in keys:
                ax.plot(epochs, _series(rows, name), style, markersize=3, label=name)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        _draw_boundaries(ax, boundaries)
    return fig


def _draw_boundaries(ax, boundaries: Sequence[tuple[float, str]]) -> None:
    for epoch, label in boundaries:
        x = epoch - 0.5
        ax.axvline(x, color="gray", linestyle="--", linewidth=1)
        ax.text(
            x,
            0.98,
            f" {label}",
            transform=ax.get_xaxis_transform(),  # x in data units, y in axes fraction
            rotation=90,
            va="top",
            ha="left",
            color="dimgray",
            fontsize=8,
        )


# --------------------------------------------------------------------------- summary


def summary_text(run: Mapping[str, Any]) -> str:
    """One screen describing a finished run; keys missing from ``run`` are skipped.

    Recognised keys: ``backbone``; ``mode``; ``phases`` (list of ``{"name", "epochs",
    "fit"}`` dicts or names; a probe shows no epochs); ``epochs`` (trained, probes
    left out); ``examples`` (``{"train": n, "val": n, "test": n}``);
    ``best_val_accuracy`` and ``best_epoch``; ``test_accuracy``; ``blended`` (the
    accuracy is of the network plus the pixel blend) and ``network_check`` (from
    :func:`kerastl.outputs.health.check_network`: the network alone, always shown beside a
    blended accuracy); ``test_loss`` (the training objective) with ``label_smoothing``
    and ``test_cross_entropy``;
    ``evaluated_on`` (``"test"`` or ``"validation"``: which split gave the test numbers);
    ``seconds`` (wall time); ``trainable_params`` and ``total_params``;
    ``output_dir``; ``outputs`` (name -> path).

    Args:
        run: mapping. What the trainer recorded about the run.

    Returns:
        Aligned ``label  value`` lines, ready to print.

    Example:
        >>> print(summary_text({"backbone": "MobileNetV2", "test_accuracy": 0.9125}))
        kerastl run summary
          backbone        MobileNetV2
          test accuracy   91.25%
    """
    if not isinstance(run, Mapping):
        raise ConfigError(f"run must be a dict of run facts; received {type(run).__name__}.")
    lines = [(label, value) for label, value in _summary_fields(run) if value is not None]
    width = max((len(label) for label, _ in lines), default=0) + 2
    body = [f"  {label.ljust(width)} {value}" for label, value in lines]
    return "\n".join(["kerastl run summary", *body])


def _summary_fields(run: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    fields = [
        ("backbone", _opt(run.get("backbone"))),
        ("mode", _mode(run)),
        ("epochs", _opt(run.get("epochs"))),
        ("examples", _examples(run.get("examples"))),
        ("best val accuracy", _best(run)),
        ("test accuracy", _evaluated(run, _accuracy(run))),
        ("network alone", _network_alone(run)),
        (_loss_label(run), None if run.get("test_loss") is None else f"{run['test_loss']:.4f}"),
        ("cross-entropy", None if run.get("test_cross_entropy") is None
         else f"{run['test_cross_entropy']:.4f}"),
        ("time", None if run.get("seconds") is None else _duration(float(run["seconds"]))),
        ("trainable params", _params(run)),
        ("outputs", _opt(run.get("output_dir"))),
    ]
    for name, location in (run.get("outputs") or {}).items():
        fields.append((f"  {name}", str(location)))
    return fields


def _accuracy(run: Mapping[str, Any]) -> str | None:
    value = _percent(run.get("test_accuracy"))
    return f"{value} (network + pixel blend)" if value and run.get("blended") else value


def _network_alone(run: Mapping[str, Any]) -> str | None:
    # Never a blended number without the network's own beside it (issue 27).
    check = run.get("network_check") or {}
    if not run.get("blended") and check.get("status") in (None, "ok"):
        return None
    value = _percent(check.get("network_accuracy"))
    if value is None:
        return None
    if check.get("status") == "at_chance":
        return f"{value} AT CHANCE ({_percent(check.get('chance'))}): it did not learn"
    return value if check.get("status") == "ok" else f"{value} ({check['status']})"


def _loss_label(run: Mapping[str, Any]) -> str:
    smoothing = run.get("label_smoothing")
    return f"loss (smoothing {smoothing:g})" if smoothing else "loss"


def _evaluated(run: Mapping[str, Any], value: str | None) -> str | None:
    # Without a test split the "test" numbers come from validation; say so.
    where = run.get("evaluated_on")
    return value if value is None or where in (None, "test") else f"{value} (on {where} split)"


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _mode(run: Mapping[str, Any]) -> str | None:
    text = " -> ".join(_phase_text(phase) for phase in run.get("phases") or ())
    if run.get("mode") is None:
        return text or None
    return f"{run['mode']} ({text})" if text else str(run["mode"])


def _phase_text(phase: Mapping[str, Any] | str) -> str:
    if not isinstance(phase, Mapping):
        return str(phase)
    if phase.get("fit") == "probe" or "epochs" not in phase:
        return str(phase["name"])  # a probe is fitted once, not trained for epochs
    return f"{phase['name']} {phase['epochs']} ep"


def _examples(examples: Mapping[str, int] | None) -> str | None:
    if not examples:
        return None
    return ", ".join(f"{split} {count:,}" for split, count in examples.items())


def _best(run: Mapping[str, Any]) -> str | None:
    best = _percent(run.get("best_val_accuracy"))
    if best is None or run.get("best_epoch") is None:
        return best
    where = run["best_epoch"]
    return f"{best} ({where if isinstance(where, str) else f'epoch {where}'})"


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * float(value):.2f}%"


def _params(run: Mapping[str, Any]) -> str | None:
    trainable, total = run.get("trainable_params"), run.get("total_params")
    if trainable is None:
        return None
    return f"{int(trainable):,}" + ("" if total is None else f" of {int(total):,}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"

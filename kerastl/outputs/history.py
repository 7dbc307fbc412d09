"""Training history: the per-epoch CSV and the curves with a line where each phase begins."""

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

from ..core.errors import ConfigError, DataError
from ..core.files import atomic_write_text, save_figure
from .reports import ACCURACY_KEYS

# Columns a reader looks for first; any other logged key follows in first-seen order.
HISTORY_COLUMNS = ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_accuracy")


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

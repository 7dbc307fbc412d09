"""Labelled images listed in a table: a CSV file, a DataFrame or two Python lists.

Every Kaggle competition and fastai's ``from_csv``/``from_df`` bring labels as a
table of file names. :func:`from_csv`, :func:`from_dataframe` and :func:`from_files`
turn one into the same :class:`kerastl.ImageData` a class folder gives, through the
same pre-flight check (:func:`kerastl.data.folders.checked_files`), so bad files, skipping
and the decoded-memory budget behave exactly as for folders. A row that cannot be
used (missing file, empty or unknown label) stops loading with one line naming it.

A CSV has the columns ``path`` and ``label``; paths are relative to the CSV's folder;
a label with ``;`` in it (``"cat;outdoor"``) makes the table multi-label (multi-hot
labels, ``task="multilabel"``).

Example:
    >>> data = from_csv("data/labels.csv")  # doctest: +SKIP
    >>> val = from_csv("data/val.csv", class_names=data.class_names)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import DataError
from .folders import checked_files
from .image_data import ImageData
from .images import FolderScan

PATH_COLUMN = "path"
LABEL_COLUMN = "label"
MULTILABEL_SEPARATOR = ";"


def is_table(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a CSV of ``path,label`` rows rather than a folder.

    Example:
        >>> is_table("data/labels.csv"), is_table("data/train")
        (True, False)
    """
    return os.fspath(path).lower().endswith(".csv")


def from_csv(path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
             **check: Any) -> ImageData:
    """Read a CSV with the columns ``path`` and ``label`` (paths relative to the CSV).

    Args:
        path: str or path. The CSV file.
        class_names: sequence of str, optional. Classes the labels must come from,
            in label order (give the training classes when reading validation rows).
            Defaults to the labels found, sorted.
        **check: ``on_bad_file``, ``image_size``, ``check_files``, ``decoded_memory``,
            as in :func:`kerastl.from_folder`.

    Returns:
        An :class:`kerastl.ImageData`.

    Raises:
        DataError: no such file, a missing column, or a row that cannot be used
            (named by its line in the file).

    Example:
        >>> train = from_csv("data/labels.csv", image_size=224)  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Label file not found: {path!r}. Pass a CSV with the columns "
                        f"{PATH_COLUMN!r} and {LABEL_COLUMN!r}, or a folder of class "
                        "subfolders.")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, reader.fieldnames or [])
        rows = [(row.get(PATH_COLUMN) or "", row.get(LABEL_COLUMN) or "") for row in reader]
    # Line numbers as an editor shows them: the header is line 1.
    return _from_rows(rows, source=path, root=os.path.dirname(os.path.abspath(path)),
                      where=lambda i: f"{path} line {i + 2}", class_names=class_names,
                      **check)


def from_dataframe(frame: Any, *, root: str | os.PathLike | None = None,
                   class_names: Sequence[str] | None = None, **check: Any) -> ImageData:
    """Read a pandas DataFrame (or any table with columns) of ``path`` and ``label``.

    Args:
        frame: a ``pandas.DataFrame``, or anything with ``columns`` and
            ``frame[column]`` giving a column's values.
        root: str or path, optional. Folder relative paths start from. Defaults to
            the working directory.
        class_names: sequence of str, optional. See :func:`from_csv`.
        **check: as in :func:`from_csv`.

    Raises:
        DataError: a missing column or a row that cannot be used (named by its index).

    Example:
        >>> import pandas as pd  # doctest: +SKIP
        >>> frame = pd.DataFrame({"path": ["a.jpg"], "label": ["cat"]})  # doctest: +SKIP
        >>> from_dataframe(frame, root="images")  # doctest: +SKIP
    """
    columns = [str(column) for column in getattr(frame, "columns", [])]
    _check_columns("the DataFrame", columns)
    paths, labels = list(frame[PATH_COLUMN]), list(frame[LABEL_COLUMN])
    index = list(getattr(frame, "index", range(len(paths))))
    rows = [(_text(p), _text(label)) for p, label in zip(paths, labels, strict=True)]
    return _from_rows(rows, source="the DataFrame", root=os.fspath(root or os.getcwd()),
                      where=lambda i: f"DataFrame row {index[i]!r}",
                      class_names=class_names, **check)


def from_files(files: Sequence[str | os.PathLike], labels: Sequence, *,
               class_names: Sequence[str] | None = None, **check: Any) -> ImageData:
    """Image files and one label each (a class name, or a list of them: multi-label).

    Args:
        files: sequence of str or path. The images.
        labels: sequence. A class name per file, or a list of class names
            (multi-label).
        class_names: sequence of str, optional. See :func:`from_csv`.
        **check: as in :func:`from_csv`.

    Raises:
        DataError: lengths differ, or a file or label cannot be used (named).

    Example:
        >>> data = from_files(["a.jpg", "b.jpg"], ["cat", "dog"])  # doctest: +SKIP
    """
    if len(files) != len(labels):
        raise DataError(f"Expected one label per file; received {len(files)} files and "
                        f"{len(labels)} labels.")
    rows = [(os.fspath(f), MULTILABEL_SEPARATOR.join(map(str, label))
             if isinstance(label, (list, tuple)) else _text(label))
            for f, label in zip(files, labels, strict=True)]
    return _from_rows(rows, source="the file list", root=os.getcwd(),
                      where=lambda i: f"file {i} ({rows[i][0]!r})", class_names=class_names,
                      **check)


def scan_table(path: str | os.PathLike) -> tuple[FolderScan, dict[str, str]]:
    """A CSV's files grouped by label, as :func:`kerastl.data.images.scan_folder` groups a
    folder's, for the doctor; rows that name no usable file are returned apart.

    Returns:
        ``(scan, problems)``: the files of each class (a multi-label row under each of
        its classes), and path (or line) -> one-line reason for rows left out.

    Raises:
        DataError: no such file, or a missing column.

    Example:
        >>> scan, problems = scan_table("data/labels.csv")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Label file not found: {path!r}.")
    root = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, reader.fieldnames or [])
        rows = [(_text(row.get(PATH_COLUMN)), _text(row.get(LABEL_COLUMN))) for row in reader]
    class_files: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    for i, (file, label) in enumerate(rows):
        where = f"{path} line {i + 2}"
        full = file if os.path.isabs(file) else os.path.join(root, file)
        names = [name.strip() for name in label.split(MULTILABEL_SEPARATOR) if name.strip()]
        if not file:
            problems[where] = f"empty {PATH_COLUMN!r}"
        elif not os.path.isfile(full):
            problems[full] = f"file not found ({where})"
        elif not names:
            problems[full] = f"empty {LABEL_COLUMN!r} ({where})"
        else:
            for name in names:
                class_files.setdefault(name, []).append(full)
    scan = FolderScan(root=path, class_files=dict(sorted(class_files.items())), hidden=[],
                      loose_files=[])
    return scan, problems


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _check_columns(source: str, columns: list[str]) -> None:
    missing = [name for name in (PATH_COLUMN, LABEL_COLUMN) if name not in columns]
    if missing:
        raise DataError(f"{source} has no {' or '.join(map(repr, missing))} column; found "
                        f"columns {columns}. Name the columns {PATH_COLUMN!r} and "
                        f"{LABEL_COLUMN!r}.")


def _from_rows(rows: list[tuple[str, str]], *, source: str, root: str, where,
               class_names: Sequence[str] | None, **check: Any) -> ImageData:
    if not rows:
        raise DataError(f"{source} lists no images.")
    multilabel = any(MULTILABEL_SEPARATOR in label for _, label in rows)
    files, names_per_row = [], []
    for i, (path, label) in enumerate(rows):
        if not path.strip():
            raise DataError(f"{where(i)}: empty {PATH_COLUMN!r}.")
        full = path if os.path.isabs(path) else os.path.join(root, path)
        if not os.path.isfile(full):
            raise DataError(f"{where(i)}: file not found: {full!r}.")
        names = ([name.strip() for name in label.split(MULTILABEL_SEPARATOR) if name.strip()]
                 if multilabel else [label] if label else [])
        if not names and not multilabel:
            raise DataError(f"{where(i)}: empty {LABEL_COLUMN!r}; give every image a class.")
        files.append(full)
        names_per_row.append(names)
    found = sorted({name for names in names_per_row for name in names})
    classes = list(class_names) if class_names is not None else found
    index = {name: i for i, name in enumerate(classes)}
    for i, names in enumerate(names_per_row):
        unknown = [name for name in names if name not in index]
        if unknown:
            raise DataError(f"{where(i)}: label {unknown[0]!r} is not one of the training "
                            f"classes {classes}.")
    if multilabel:
        labels = np.zeros((len(files), len(classes)), np.float32)
        for i, names in enumerate(names_per_row):
            labels[i, [index[name] for name in names]] = 1.0
    else:
        labels = np.asarray([index[names[0]] for names in names_per_row], np.int64)
    if "check_files" in check:  # from_folder's name for it
        check["check"] = check.pop("check_files")
    return checked_files(files, labels, classes, root=source, **check)

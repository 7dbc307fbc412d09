"""Where labelled images come from: a class folder, a CSV table or TFRecord shards.

:func:`read_data` reads any of them into an :class:`~kerastl.data.image_data.ImageData`;
:func:`native_image_side` tells their images' own size from headers alone.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .folders import from_folder
from .image_data import ImageData
from .images import SIZE_SAMPLE_FILES, native_image_side_of, scan_folder
from .tables import from_csv, is_table
from .tfrecords import from_tfrecords, is_tfrecords, record_image_sides


def read_data(path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
              **check: Any) -> ImageData:
    """A folder of class subfolders, a ``.csv`` of ``path,label`` rows or TFRecord shards.

    Args:
        path: str or path. The folder, the CSV (:func:`kerastl.data.tables.from_csv`) or a
            shard glob (:func:`kerastl.data.tfrecords.from_tfrecords`).
        class_names: sequence of str, optional. The classes, in label order.
        **check: ``on_bad_file``, ``image_size``, ``check_files``, ``decoded_memory``,
            as in :func:`from_folder`.

    Example:
        >>> read_data("data_samples/fashion/train").class_names[:2]
        ['ankle_boot', 'bag']
    """
    reader = (from_csv if is_table(path) else from_tfrecords if is_tfrecords(path)
              else from_folder)
    return reader(path, class_names=class_names, **check)


def native_image_side(root: str | os.PathLike, *, sample: int = SIZE_SAMPLE_FILES) -> int | None:
    """The median shorter side of a folder's images, from their headers alone.

    What a run without pretrained weights trains at: nothing was trained at a
    particular size, and upscaling 32 px images to 224 px costs about 50 times the
    compute for no information (issue 27: 5 min 49 s against 88 s).

    Args:
        root: str or path. Folder with one subfolder per class, a CSV whose
            ``path`` column names the files (relative to the CSV), or TFRecord shards.
        sample: int. Files read at most, spread evenly over the sorted list.

    Returns:
        int, or None when no file could be opened (the data check reports why).

    Example:
        >>> native_image_side("data_samples/fashion/train")
        28
    """
    if is_tfrecords(root):
        sides = record_image_sides(root, sample=sample)
        return int(np.median(sides)) if sides else None
    files = (_table_files(root) if os.path.isfile(root) else
             [path for paths in scan_folder(root).class_files.values() for path in paths])
    return native_image_side_of(files, sample=sample)


def _table_files(table: str | os.PathLike) -> list[str]:
    """The files a ``path,label`` CSV names, for a header-only look (no checks)."""
    folder = os.path.dirname(os.path.abspath(table))
    with open(table, newline="", encoding="utf-8-sig") as handle:
        return [os.path.join(folder, row["path"]) for row in csv.DictReader(handle)
                if row.get("path")]

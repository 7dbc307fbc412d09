"""Training, validation and test splits: given folders or tables, or held out.

:func:`load_splits` turns a run's ``data``/``val_data``/``test_data`` (class folders or
CSV tables) into :class:`DataSplits`; without ``val_data`` it holds out a stratified
share of the training images (:func:`auto_val_share` says how much, and why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from ..core.errors import ConfigError, DataError
from .image_data import ImageData
from .sources import read_data


def train_val_split(data: ImageData, val_fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Split off a validation set with the same class proportions (stratified).

    Args:
        data: ImageData. What to split.
        val_fraction: float. Share of images for validation, in ``(0, 1)``.
        seed: int. Seed of the split; the same seed gives the same split.

    Returns:
        ``(train, val)``. Multi-label data is split without stratification.

    Raises:
        ConfigError: ``val_fraction`` outside ``(0, 1)``.
        DataError: a class has too few images to appear in both parts.

    Example:
        >>> from kerastl.data.arrays import from_arrays
        >>> data = from_arrays(np.zeros((10, 8, 8), "uint8"), [0, 1] * 5)
        >>> [len(part) for part in train_val_split(data, 0.2, seed=0)]
        [8, 2]
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must be in (0, 1); received val_fraction={val_fraction!r}."
        )
    stratify = None if data.multilabel else data.labels
    if stratify is not None:
        counts = np.bincount(stratify, minlength=len(data.class_names))
        too_small = [name for name, n in zip(data.class_names, counts, strict=True) if 0 < n < 2]
        if too_small:
            raise DataError(
                f"Classes {too_small} have a single image, too few for a stratified "
                "validation split. Add images or pass a separate validation folder."
            )
    try:
        train, val = train_test_split(
            np.arange(len(data)), test_size=val_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as error:
        raise DataError(
            f"Cannot split {len(data)} images into train/validation with "
            f"val_fraction={val_fraction}: {error} Use a larger val_fraction or a "
            "separate validation folder."
        ) from error
    return data.subset(np.sort(train)), data.subset(np.sort(val))


@dataclass
class DataSplits:
    """Training, validation and test data sharing one list of classes.

    Attributes:
        train: ImageData.
        val: ImageData or None.
        test: ImageData or None.
        class_names: list of str. Classes of all splits, fixed by the training folder.
        notes: list of str. How the splits were made (e.g. why nothing was held out).
    """

    train: ImageData
    val: ImageData | None
    test: ImageData | None
    class_names: list[str]
    notes: list[str] = field(default_factory=list)

    def skipped(self) -> dict[str, str]:
        """Every file ``on_bad_file='skip'`` left out, over all splits (path -> reason)."""
        skipped: dict[str, str] = {}
        for data in (self.train, self.val, self.test):
            if data is not None:
                skipped.update(data.skipped)
        return skipped


def load_splits(
    train_dir: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    test_dir: str | os.PathLike | None = None,
    val_split: float | str | None = "auto",
    seed: int = 0,
    on_bad_file: str = "error",
    image_size: int | None = None,
    check_files: str = "full",
    decoded_memory: str | int | None = "auto",
) -> DataSplits:
    """Load training data and its validation/test data with the same classes.

    Each of them is a folder of class subfolders, a ``.csv`` of ``path,label`` rows
    (see :func:`kerastl.data.tables.from_csv`) or TFRecord shards such as
    ``"gs://bucket/train-*.tfrecord"`` (see :func:`kerastl.data.tfrecords.from_tfrecords`).

    Args:
        train_dir: str or path. Training folder, one subfolder per class, or a CSV.
        val_dir: str or path, optional. Validation folder with the same classes.
            Without it, ``val_split`` of the training images are held out
            (stratified, seeded).
        test_dir: str or path, optional. Test folder with the same classes.
        val_split: float, ``"auto"`` or None. Held-out share when there is no
            ``val_dir``; ``None`` or ``0`` for no validation; ``"auto"`` holds out
            :data:`AUTO_VAL_SHARE` only where that leaves every class at least
            :data:`MIN_VAL_PER_CLASS` validation images (see :func:`auto_val_share`).
            Defaults to ``"auto"``.
        seed: int. Seed of the held-out split. Defaults to 0.
        on_bad_file: str. ``"error"`` or ``"skip"``, see :func:`from_folder`.
        image_size: int, optional. Keep the images the check decodes at this size,
            see :func:`from_folder`.
        check_files: str. ``"full"``, ``"header"`` or ``"none"``, see
            :func:`from_folder`. Defaults to ``"full"``.
        decoded_memory: str, int or None. RAM budget for decoded images, see
            :func:`from_folder`. Defaults to ``"auto"``.

    Returns:
        A :class:`DataSplits`; its ``notes`` say what was held out and why.

    Example:
        >>> splits = load_splits("data/train", val_dir="data/val")  # doctest: +SKIP
        >>> splits.class_names  # doctest: +SKIP
        ['cats', 'dogs']
    """
    def read(path, class_names=None):
        return read_data(path, class_names=class_names, on_bad_file=on_bad_file,
                         image_size=image_size, check_files=check_files,
                         decoded_memory=decoded_memory)

    train = read(train_dir)
    names = train.class_names
    notes = []
    if val_dir is not None:
        val = read(val_dir, class_names=names)
    else:
        share, why = (auto_val_share(train) if val_split == "auto"
                      else (float(val_split or 0.0), f"--val-split {val_split}"))
        notes.append(why)
        train, val = train_val_split(train, share, seed) if share > 0 else (train, None)
    test = None
    if test_dir is not None:
        test = read(test_dir, class_names=names)
    return DataSplits(train=train, val=val, test=test, class_names=list(names), notes=notes)


# What --val-split auto holds out, and the validation images per class it needs.
# Chosen on the transfer suite's validation images (benchmarks/transfer_suite.py):
# below this, a held-out split costs the model a fifth of its few training images
# and picks epochs by noise (5 images validate in steps of 20 points).
AUTO_VAL_SHARE = 0.2
MIN_VAL_PER_CLASS = 10


def auto_val_share(data: ImageData) -> tuple[float, str]:
    """Share of ``data`` to hold out for validation, and why.

    :data:`AUTO_VAL_SHARE` when every class keeps at least
    :data:`MIN_VAL_PER_CLASS` validation images; 0 otherwise (train on every
    image, keep the last epoch).

    Example:
        >>> from kerastl.data.arrays import from_arrays
        >>> auto_val_share(from_arrays(np.zeros((20, 8, 8), "uint8"), [0, 1] * 10))[0]
        0.0
    """
    counts = np.bincount(data.labels, minlength=len(data.class_names)) if not \
        data.multilabel else np.asarray(data.labels).sum(axis=0).astype(int)
    smallest = int(counts.min()) if counts.size else 0
    if smallest * AUTO_VAL_SHARE >= MIN_VAL_PER_CLASS:
        return AUTO_VAL_SHARE, (f"validation: {AUTO_VAL_SHARE:.0%} of the training images "
                                "held out (stratified)")
    return 0.0, (f"validation: none held out (the smallest class has {smallest} images; "
                 f"{AUTO_VAL_SHARE:.0%} of it is under {MIN_VAL_PER_CLASS}), so every image "
                 "trains; pass --val-data DIR or --val-split F to validate")

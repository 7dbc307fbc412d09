"""A folder of class subfolders, and any list of files, checked before training."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..config.choices import BAD_FILE_POLICIES
from ..core import backend as _backend  # noqa: F401  (pins the TensorFlow backend)
from ..core.errors import ConfigError, DataError
from .decoding import (  # noqa: F401  (CHECK_FILES, DECODE_METHOD: re-exported)
    CHECK_FILES,
    DECODE_METHOD,
    check_files,
    decoded_memory_budget,
    file_pixels,
)
from .image_data import ImageData, check_positive
from .images import scan_folder


def from_folder(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    on_bad_file: str = "error",
    image_size: int | None = None,
    check_files: str = "full",
    decoded_memory: str | int | None = "auto",
) -> ImageData:
    """Read a folder with one subfolder per class (``path/cats/*.jpg``, ...).

    Files ending in .jpg, .jpeg, .png, .bmp or .gif (any case) are images; hidden
    files and folders (``.ipynb_checkpoints``, ``.DS_Store``, ``__MACOSX``) are never
    classes or images. Every other file is checked before anything is decoded.

    Args:
        path: str or path. The folder.
        class_names: sequence of str, optional. Classes the folder must have, in label
            order (give the training classes when reading a validation folder).
            Defaults to the subfolder names, sorted.
        on_bad_file: str. ``"error"`` raises naming every unusable file; ``"skip"``
            leaves them out and records them in ``ImageData.skipped``.
        image_size: int, optional. The full check decodes every file; with a size
            it keeps them decoded at that size, so training at that size reads no
            file (uint8, ``size * size * 3`` bytes an image, while they fit the
            ``decoded_memory`` budget). Defaults to None.
        check_files: str. ``"full"`` decodes every file before training (on every
            core, once: the pixels are kept under the budget); ``"header"`` reads
            only headers (a truncated file then stops training when reached);
            ``"none"`` opens no file. Defaults to ``"full"``.
        decoded_memory: str, int or None. RAM for decoded images: ``"auto"``
            (:data:`kerastl.data.decoding.DECODED_MEMORY_SHARE` of the available
            memory, at most :data:`kerastl.data.decoding.DECODED_MEMORY_CAP`), bytes
            or a size like ``"2G"``; 0 keeps none (every epoch decodes, on every
            core). Defaults to ``"auto"``.

    Returns:
        An :class:`ImageData` of file paths and integer labels.

    Raises:
        DataError: missing or empty folder, empty class folder, classes that differ
            from ``class_names``, or bad files with ``on_bad_file="error"``.

    Example:
        >>> train = from_folder("data/train")  # doctest: +SKIP
        >>> val = from_folder("data/val", class_names=train.class_names)  # doctest: +SKIP
    """
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(
            f"on_bad_file must be one of {BAD_FILE_POLICIES}; received on_bad_file={on_bad_file!r}."
        )
    scan = scan_folder(path)
    names = _resolve_classes(scan.root, list(scan.class_files), class_names)
    _check_no_empty_class(scan.root, names, [len(scan.class_files[name]) for name in names])
    files = [file for name in names for file in scan.class_files[name]]
    labels = [label for label, name in enumerate(names) for _ in scan.class_files[name]]
    data = checked_files(files, labels, names, root=scan.root, on_bad_file=on_bad_file,
                         image_size=image_size, check=check_files,
                         decoded_memory=decoded_memory)
    # Skipping may leave a class with nothing in it.
    _check_no_empty_class(scan.root, names, np.bincount(data.labels, minlength=len(names)))
    return data


def checked_files(files: list[str], labels: Sequence | np.ndarray, class_names: list[str], *,
                  root: str, on_bad_file: str = "error", image_size: int | None = None,
                  check: str = "full",
                  decoded_memory: str | int | None = "auto") -> ImageData:
    """An :class:`ImageData` of ``files`` after the pre-flight check (every input's path).

    Args:
        files: list of str. Image files.
        labels: array. One class id (or multi-hot row) per file.
        class_names: list of str. Name of each class id.
        root: str. What the files came from, for messages (a folder, a CSV).
        on_bad_file, image_size, check, decoded_memory: see :func:`from_folder`
            (``check`` is its ``check_files``).

    Raises:
        DataError: bad files with ``on_bad_file="error"``.

    Example:
        >>> checked_files([], [], ["a"], root="none", check="none").class_names
        ['a']
    """
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(
            f"on_bad_file must be one of {BAD_FILE_POLICIES}; received on_bad_file={on_bad_file!r}."
        )
    labels = np.asarray(labels)
    if image_size is not None:
        check_positive(image_size=image_size)
    need = len(files) * (image_size or 0) ** 2 * 3
    keep_now = (image_size is not None and check == "full"
                and need <= decoded_memory_budget(decoded_memory))
    pixels = np.zeros((len(files), image_size, image_size, 3), np.uint8) if keep_now else None
    bad, use_pil = check_files(files, check, image_size=image_size, store=pixels)
    if bad and on_bad_file == "error":
        raise DataError(_bad_files_message(root, bad))
    keep = np.asarray([i for i, file in enumerate(files) if file not in bad], np.int64)
    data = ImageData(class_names=list(class_names), labels=labels[keep],
                     files=[files[i] for i in keep], skipped=bad, use_pil=use_pil[keep],
                     decoded_memory=decoded_memory)
    if pixels is not None:  # a skipped file's row is simply never read
        data._pixels[image_size] = (pixels, np.ones(len(pixels), bool),
                                    np.asarray(keep, np.int64) if bad else None)
    return data


def _resolve_classes(root: str, found: list[str], expected: Sequence[str] | None) -> list[str]:
    if not found:
        raise DataError(
            f"No class subfolders in {root!r}. Put the images in one subfolder per class, "
            f"e.g. {os.path.join(root, 'cats', '1.jpg')}."
        )
    if expected is None:
        return found
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise DataError(
            f"The classes in {root!r} do not match the training classes {list(expected)}: "
            f"missing here: {missing}; extra here: {extra}. Give every split the same "
            "class subfolders."
        )
    return list(expected)


def _check_no_empty_class(root: str, names: list[str], counts: Sequence[int]) -> None:
    empty = [
        os.path.join(root, name) for name, count in zip(names, counts, strict=True) if not count
    ]
    if empty:
        raise DataError(
            f"Class folder(s) with no usable image: {empty}. Add images to them or delete "
            "the folders (run `python -m kerastl.doctor` on the data folder for details)."
        )


def _bad_files_message(root: str, bad: dict[str, str]) -> str:
    listing = "\n".join(f"  {path}: {reason}" for path, reason in bad.items())
    return (
        f"{len(bad)} file(s) in {root!r} cannot be used for training:\n{listing}\n"
        "Fix or delete them, or pass on_bad_file='skip' to leave them out."
    )

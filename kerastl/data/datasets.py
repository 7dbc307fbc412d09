"""Fashion-MNIST from local idx files, read with NumPy.

kerastl's examples, tests and transfer study use Fashion-MNIST (Zalando Research,
MIT licence) because it is small, real and ships as a Debian package
(``apt-get install dataset-fashion-mnist``), so nothing has to be downloaded.
:func:`fashion_mnist` looks for the four idx files in ``path``, then in
``$KERASTL_FASHION_MNIST``, then in the Debian location, and only goes online
(``keras.datasets.fashion_mnist``) when asked to with ``download=True``.

The idx format is four header bytes ``0, 0, dtype code, ndim``, then ``ndim``
big-endian uint32 dimensions, then the data. :func:`read_idx` checks all of it, so
a truncated download is reported by name instead of as a reshape error.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.errors import DataError

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "KERASTL_FASHION_MNIST"

_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# idx dtype codes (the third header byte); big-endian as the format prescribes.
_IDX_DTYPES = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype: code for code, dtype in _IDX_DTYPES.items()}

Splits = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (plain or ``.gz``) into a NumPy array.

    Args:
        path: path to an idx file such as ``train-images-idx3-ubyte.gz``.

    Returns:
        The array, with the shape and dtype stored in the file header.

    Raises:
        DataError: the file is not idx (bad magic number), is truncated, or is a
            corrupt gzip stream; the message names the file.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte")
        >>> _ = write_idx(p, np.zeros((2, 3, 3), np.uint8))
        >>> read_idx(p).shape
        (2, 3, 3)
    """
    path = Path(path)
    try:
        with _open(path) as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:  # gzip raises both for cut-off streams
        raise DataError(
            f"Cannot read idx file {str(path)!r}: {error}. The file is truncated or "
            "corrupt; reinstall it (apt-get install --reinstall dataset-fashion-mnist) "
            "or download it again."
        ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{str(path)!r} is not an idx file: its magic number is {raw[:4].hex() or 'empty'} "
            "(expected 0000 then a dtype code such as 08 and the number of dimensions). "
            "Pass the directory holding the original *-idx?-ubyte(.gz) files."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {str(path)!r} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"idx file {str(path)!r} has {len(raw)} bytes but its header {shape} needs "
            f"{expected}: the file is truncated or corrupt. Download or copy it again."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an array as an idx file, gzipped when ``path`` ends in ``.gz``.

    Useful for making tiny Fashion-MNIST look-alikes in tests.

    Args:
        path: destination, e.g. ``tmp/train-images-idx3-ubyte.gz``.
        array: np.ndarray of uint8, int8, int16, int32, float32 or float64.

    Returns:
        The written path.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "y-idx1-ubyte.gz")
        >>> read_idx(write_idx(p, np.arange(3, dtype=np.uint8))).tolist()
        [0, 1, 2]
    """
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _IDX_CODES:
        raise DataError(
            f"idx cannot store dtype {array.dtype}; received an array of that dtype. "
            "Cast it to uint8, int16, int32, float32 or float64."
        )
    header = bytes([0, 0, _IDX_CODES[big_endian], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as handle:
        handle.write(header + array.astype(big_endian).tobytes())
    return path


def _find_files(directory: Path) -> dict[str, Path] | None:
    """The four idx paths in ``directory`` (``.gz`` or plain), or None if any is missing."""
    found = {}
    for key, stem in _FILES.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            return None
        found[key] = existing[0]
    return found


def _candidate_dirs(path: str | os.PathLike | None) -> list[tuple[str, Path]]:
    if path is not None:
        return [("path argument", Path(path))]
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    dirs.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    return dirs


def _load_splits(path: str | os.PathLike | None, download: bool):
    looked = []
    for origin, directory in _candidate_dirs(path):
        files = _find_files(directory)
        if files is not None:
            arrays = {key: read_idx(file) for key, file in files.items()}
            return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
        looked.append(f"{directory} ({origin})")
    if download:
        import keras

        return keras.datasets.fashion_mnist.load_data()
    names = ", ".join(f"{stem}[.gz]" for stem in _FILES.values())
    raise DataError(
        f"Fashion-MNIST idx files ({names}) not found; looked in: {'; '.join(looked)}. "
        "Remedies: (1) apt-get install dataset-fashion-mnist; (2) pass "
        f"fashion_mnist(path=DIR) or set ${ENV_VAR}=DIR with the four files; or (3) "
        "fashion_mnist(download=True) to fetch them with keras.datasets (needs network)."
    )


def select_classes(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the images of ``classes`` and relabel them ``0..k-1`` in the given order.

    Args:
        images: np.ndarray. Images, first axis indexes samples.
        labels: np.ndarray. Integer labels, one per image.
        classes: sequence of int. Original class ids to keep.

    Returns:
        ``(images, labels)`` of the kept samples, labels as int64 in ``0..k-1``.

    Example:
        >>> import numpy as np
        >>> x, y = select_classes(np.arange(4), np.array([5, 1, 7, 5]), [5, 7])
        >>> x.tolist(), y.tolist()
        ([0, 2, 3], [0, 1, 0])
    """
    classes = [int(c) for c in classes]
    lookup = np.full(int(max(labels.max(), max(classes))) + 1, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    new_labels = lookup[labels]
    keep = new_labels >= 0
    return images[keep], new_labels[keep]


def _validate_classes(classes: Sequence[int] | None) -> list[int]:
    if classes is None:
        return list(range(len(FASHION_MNIST_CLASSES)))
    chosen = [int(c) for c in classes]
    bad = [c for c in chosen if not 0 <= c < len(FASHION_MNIST_CLASSES)]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise DataError(
            f"classes must be distinct Fashion-MNIST class ids in 0..9; received "
            f"classes={list(classes)!r}. E.g. classes=range(5, 10) for "
            f"{list(FASHION_MNIST_CLASSES[5:])}."
        )
    return chosen


def fashion_mnist(
    path: str | os.PathLike | None = None,
    *,
    classes: Sequence[int] | None = None,
    download: bool = False,
) -> Splits:
    """Load Fashion-MNIST as uint8 NumPy arrays, optionally a subset of classes.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each ``.gz`` or
    plain) in ``path``; without ``path``, in ``$KERASTL_FASHION_MNIST`` and then
    ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

    Args:
        path: directory holding the idx files, optional.
        classes: sequence of int, optional. Class ids to keep, relabelled
            ``0..k-1`` in the given order; ``class_names`` follows. Defaults to all
            ten.
        download: bool. If no local files are found, fetch them with
            ``keras.datasets.fashion_mnist.load_data()`` (needs network). Defaults
            to False.

    Returns:
        ``((x_train, y_train), (x_test, y_test), class_names)``: images uint8
        ``(n, 28, 28)``, labels int64 ``(n,)``, folder-safe class names such as
        ``"ankle_boot"``.

    Raises:
        DataError: no files found (the message lists where it looked and the
            remedies), a file is truncated or not idx, or ``classes`` is invalid.

    Example:
        >>> import kerastl
        >>> (x, y), _, names = kerastl.fashion_mnist(classes=[5, 9])  # doctest: +SKIP
        >>> names  # doctest: +SKIP
        ['sandal', 'ankle_boot']
    """
    chosen = _validate_classes(classes)
    (x_train, y_train), (x_test, y_test) = _load_splits(path, download)
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {split} split has {len(images)} images but {len(labels)} "
                "labels; the files belong to different datasets or one is truncated."
            )
    x_train, y_train = select_classes(x_train, y_train.astype(np.int64), chosen)
    x_test, y_test = select_classes(x_test, y_test.astype(np.int64), chosen)
    return (x_train, y_train), (x_test, y_test), [FASHION_MNIST_CLASSES[c] for c in chosen]


def digits_folder(root: str | os.PathLike, *, split: str = "train", per_class: int = 30,
                  classes: int = 4, side: int = 32) -> Path:
    """A small class-per-folder set of real handwritten digits: ``root/split/<digit>/``.

    scikit-learn's ``load_digits`` (8x8, shipped with scikit-learn, nothing to download)
    upscaled to ``side`` px RGB PNGs: the folder a new user tries first (issue 27).
    ``split="train"`` takes each class's first ``per_class`` images, any other split
    the next ``per_class``, so a train and a test folder never share an image.

    Example:
        >>> import tempfile
        >>> folder = digits_folder(tempfile.mkdtemp(), per_class=2, classes=2)
        >>> sorted(p.name for p in folder.iterdir())
        ['0', '1']
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    offset = 0 if split == "train" else per_class
    for label in range(classes):
        rows = np.flatnonzero(digits.target == label)[offset:offset + per_class]
        folder = Path(root) / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for row in rows:
            pixels = (digits.images[row] / 16 * 255).astype(np.uint8)
            image = Image.fromarray(pixels).resize((side, side), Image.BILINEAR)
            image.convert("RGB").save(folder / f"{row:04d}.png")
    return Path(root) / split

"""Images already in memory (a NumPy array) as ImageData, and batches of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ..core import backend as _backend  # noqa: F401  (pins the TensorFlow backend)
from ..core.errors import DataError
from .decoding import (  # noqa: F401  (CHECK_FILES, DECODE_METHOD: re-exported)
    CHECK_FILES,
    DECODE_METHOD,
    check_files,
    decoded_memory_budget,
    file_pixels,
)
from .image_data import ImageData, is_image_data


def from_arrays(
    images: np.ndarray,
    labels: Sequence | np.ndarray,
    class_names: Sequence[str] | None = None,
) -> ImageData:
    """Wrap in-memory images (e.g. MNIST, CIFAR) and their labels.

    Args:
        images: array. ``(N, H, W)`` grayscale or ``(N, H, W, 1|3|4)`` pixels in
            ``[0, 255]``, uint8 or float. Grayscale is repeated to 3 channels and
            alpha dropped when batches are made.
        labels: array. ``(N,)`` class ids or class-name strings, or ``(N, C)``
            multi-hot rows for multi-label data.
        class_names: sequence of str, optional. Name of each class id. Defaults to
            ``"0"``, ``"1"``, ... (or the sorted label strings).

    Returns:
        An :class:`ImageData` holding the array.

    Raises:
        DataError: shapes, label count or pixel range are not usable.

    Example:
        >>> (x, y), _ = keras.datasets.mnist.load_data()  # doctest: +SKIP
        >>> data = from_arrays(x, y)  # doctest: +SKIP
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    _check_images(images)
    if labels.shape[:1] != images.shape[:1] or labels.ndim not in (1, 2):
        raise DataError(
            f"Expected one label per image (labels of shape ({len(images)},) or "
            f"({len(images)}, num_classes)); received images of shape {images.shape} and "
            f"labels of shape {labels.shape}."
        )
    if labels.dtype.kind in "USO":
        class_names = sorted(set(labels.tolist())) if class_names is None else class_names
        labels = _ids_from_names(labels, list(class_names))
    names = _array_class_names(labels, class_names)
    return ImageData(class_names=names, labels=labels, images=images)


def _check_images(images: np.ndarray) -> None:
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise DataError(
            "Expected images of shape (N, H, W) or (N, H, W, C) with C in 1, 3 or 4; "
            f"received shape {images.shape}."
        )
    if images.dtype.kind not in "uif":
        raise DataError(f"Expected numeric pixels; received dtype {images.dtype}.")
    if images.dtype.kind == "f" and images.size:
        low, high = float(images.min()), float(images.max())
        # [0, 1] or [-1, 1] floats would train on near-black images without an error.
        if low < 0 or 0 < high <= 1:
            raise DataError(
                f"Expected raw pixels in [0, 255]; received floats in [{low:g}, {high:g}]. "
                "Pass the unscaled images (e.g. images * 255): the model applies the "
                "backbone's own preprocessing."
            )


def _ids_from_names(labels: np.ndarray, class_names: list[str]) -> np.ndarray:
    unknown = sorted(set(labels.tolist()) - set(class_names))
    if unknown:
        raise DataError(f"Labels {unknown} are not in class_names={class_names}.")
    index = {name: i for i, name in enumerate(class_names)}
    return np.asarray([index[label] for label in labels.tolist()], np.int64)


def _array_class_names(labels: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    if labels.ndim == 2:
        count = labels.shape[1]
    else:
        if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0):
            raise DataError(
                "Expected integer class ids >= 0; received labels of dtype "
                f"{labels.dtype} with minimum {labels.min()!r}."
            )
        count = int(labels.max()) + 1 if labels.size else 0
    if class_names is None:
        return [str(i) for i in range(count)]
    if len(class_names) < count:
        raise DataError(
            f"Labels need {count} classes but class_names has {len(class_names)}: "
            f"{list(class_names)}. Pass one name per class."
        )
    return [str(name) for name in class_names]


def image_batches(
    data: Any,
    *,
    image_size: int,
    batch_size: int,
    labels: np.ndarray | None = None,
    augment: Any = None,
) -> tf.data.Dataset:
    """Batches in data order from anything kerastl accepts as images: the one front door.

    Arrays go through :func:`from_arrays`, so every path accepts the same shapes
    (``(N, H, W)`` grayscale or ``(N, H, W, 1|3|4)``), checks the pixel range and
    resizes to ``image_size``; a ``tf.data.Dataset`` is used as it is.

    Args:
        data: an :class:`ImageData`, a batched ``tf.data.Dataset`` of ``(images,
            labels)`` or of images, an image array, or an ``(images, labels)`` tuple.
        image_size: int. Side images are resized to (ImageData and arrays).
        batch_size: int. Batch size for ImageData and arrays.
        labels: array, optional. Labels of an image array.
        augment: callable, optional. Applied to each batch with ``training=True``.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)``, or of images when there are no
        labels.

    Example:
        >>> ds = image_batches(np.zeros((5, 8, 8), "uint8"), image_size=8, batch_size=2)
        >>> [tuple(b.shape) for b in ds]
        [(2, 8, 8, 3), (2, 8, 8, 3), (1, 8, 8, 3)]
    """
    if isinstance(data, tuple) and len(data) == 2 and labels is None:
        data, labels = data
    if isinstance(data, tf.data.Dataset):
        dataset = data
        if augment is not None:
            labelled = isinstance(dataset.element_spec, tuple)
            dataset = dataset.map(
                (lambda x, y: (augment(x, training=True), y)) if labelled
                else (lambda x: augment(x, training=True)))
        return dataset.prefetch(tf.data.AUTOTUNE)
    unlabelled = labels is None and not is_image_data(data)
    if not is_image_data(data):
        images = np.asarray(data)
        data = from_arrays(images, np.zeros(len(images), np.int64) if labels is None
                           else labels)
    dataset = data.batches(image_size, batch_size, shuffle_seed=None, augment=augment)
    return dataset.map(lambda x, y: x) if unlabelled else dataset

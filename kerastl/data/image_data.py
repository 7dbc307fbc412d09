"""The data layer: class folders or in-memory arrays → ``tf.data`` batches.

:class:`ImageData` holds labelled images before batching (file paths or a uint8
array). Every file is checked by :func:`kerastl.data.decoding.check_files` before
training, so a bad file stops the run at load time, by name, instead of in the
middle of epoch 3.

Files are decoded inside ``tf.data`` on every core (:mod:`kerastl.data.decoding`:
TensorFlow's own decoders for plain JPEG and PNG, PIL for EXIF-rotated, CMYK,
16-bit, palette and alpha files), resized, and kept in memory as uint8 while they
fit a budget (``decoded_memory``, a share of the available memory); past it every
epoch decodes again, so memory does not grow with the number of images. Batches are
raw pixels in ``[0, 255]`` as float32: the model applies its backbone's own
``preprocess_input`` (see :func:`kerastl.build_model`).

Example:
    >>> splits = load_splits("data/train", val_split=0.2, seed=0)  # doctest: +SKIP
    >>> train = splits.train.batches(224, 32, shuffle_seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras  # noqa: E402  (after the backend is pinned)
import numpy as np
import tensorflow as tf

from ..config.choices import AUGMENTATIONS, BAD_FILE_POLICIES
from ..core import backend as _backend  # noqa: F401  (pins the TensorFlow backend)
from ..core.errors import ConfigError, DataError
from .decoding import (  # noqa: F401  (CHECK_FILES, DECODE_METHOD: re-exported)
    CHECK_FILES,
    DECODE_METHOD,
    check_files,
    decoded_memory_budget,
    file_pixels,
)
from .images import inspect_all, scan_folder

# DECODE_METHOD (kerastl.data.decoding) says how images become pixels; it is part of
# every fingerprint, so caches of features never outlive a change of decoder.
# Files hashed by content (``fingerprint(content=True)``) read this much of each end.
CONTENT_SAMPLE_BYTES = 64 * 1024
# Factor of each random augmentation: ±10% (of a full turn for rotation, of the size
# for zoom, of the contrast), the values of the Keras transfer-learning guide.
AUGMENTATION_FACTOR = 0.1


@dataclass
class ImageData:
    """Labelled images before batching: file paths or an in-memory array.

    Attributes:
        class_names: list of str. Class of each label id, in label order.
        labels: np.ndarray. Integer class ids ``(N,)``, or multi-hot ``(N, C)`` for
            multi-label data.
        files: list of str or None. Image files (exactly one of files/images is set).
        images: np.ndarray or None. ``(N, H, W)`` or ``(N, H, W, 1|3|4)`` pixels in
            ``[0, 255]``, uint8 or float.
        skipped: dict. Path -> reason, for files left out with ``on_bad_file="skip"``.
        use_pil: bool array or None. Per file: decoded by PIL rather than TensorFlow
            (see :func:`kerastl.data.images.decoder_for`); None: read from the headers
            when first needed.
        decoded_memory: str, int or None. Budget for keeping decoded images in RAM
            (see :func:`kerastl.data.decoding.decoded_memory_budget`); None: ``"auto"``.

    Example:
        >>> data = from_arrays(np.zeros((4, 28, 28), "uint8"), [0, 1, 0, 1])
        >>> len(data), data.class_names
        (4, ['0', '1'])
    """

    class_names: list[str]
    labels: np.ndarray
    files: list[str] | None = None
    images: np.ndarray | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    use_pil: np.ndarray | None = None
    decoded_memory: str | int | None = None
    # Decoded uint8 pixels per image size (only under the decoded_memory budget),
    # filled on first read of each image:
    # (store, filled, rows), image i at store[rows[i]] (rows None: at store[i]).
    # Subsets share their parent's store, so a split copies no pixel.
    _pixels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _decoded: dict[int, tf.data.Dataset] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Images the decoded_memory budget is shared by: the whole loaded set, so the
    # splits of one folder together never keep more than the budget.
    _budget_images: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.files is None) == (self.images is None):
            raise DataError(
                "ImageData needs exactly one of files= or images=; received "
                f"files={'set' if self.files is not None else None}, "
                f"images={'set' if self.images is not None else None}."
            )
        self.labels = np.asarray(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        """True when ``labels`` are multi-hot rows rather than class ids."""
        return self.labels.ndim == 2

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageData:
        """The images at ``indices``, same classes (``skipped`` is carried over).

        Example:
            >>> data = from_arrays(np.zeros((4, 8, 8), "uint8"), [0, 1, 0, 1])
            >>> len(data.subset([0, 2]))
            2
        """
        indices = np.asarray(indices, dtype=np.int64)
        subset = ImageData(
            class_names=list(self.class_names),
            labels=self.labels[indices],
            files=[self.files[i] for i in indices] if self.files is not None else None,
            images=self.images[indices] if self.images is not None else None,
            skipped=dict(self.skipped),
            use_pil=self.use_pil[indices] if self.use_pil is not None else None,
            decoded_memory=self.decoded_memory,
        )
        for size, (store, filled, rows) in self._pixels.items():
            subset._pixels[size] = (store, filled, indices if rows is None else rows[indices])
        subset._budget_images = self._budget_images or len(self)
        return subset

    def fingerprint(self, content: bool = False) -> str:
        """SHA-256 that changes when the images, labels, classes or decoder change.

        The decoder is :data:`DECODE_METHOD` and, for files, which of them PIL
        decodes: features cached from another decoder are not reused.

        Arrays are identified by their bytes. Files by path, size and modification
        time (cheap: no file is read), or with ``content=True`` also by their bytes:
        the first and last :data:`CONTENT_SAMPLE_BYTES` (the whole file when smaller),
        so a replacement that keeps size and time (``cp -p``, ``rsync -t``) is seen.
        Caches that outlive the process (a feature cache on disk) need ``content``.

        Args:
            content: bool. Also hash the bytes of each file. Defaults to False.

        Example:
            >>> data = from_arrays(np.zeros((2, 8, 8), "uint8"), [0, 1])
            >>> data.fingerprint() == data.subset([0, 1]).fingerprint()
            True
        """
        digest = hashlib.sha256()
        digest.update(json.dumps([self.class_names, DECODE_METHOD]).encode())
        labels = np.ascontiguousarray(self.labels)
        digest.update(f"{labels.dtype.str}{labels.shape}".encode() + labels.tobytes())
        if self.files is not None:
            digest.update(np.packbits(self._decoders()).tobytes())
            for path in self.files:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                if content:
                    digest.update(_content_sample(path, stat.st_size))
        else:
            images = np.ascontiguousarray(self.images)
            digest.update(f"{images.dtype.str}{images.shape}".encode() + images.tobytes())
        return digest.hexdigest()

    def decoded(self, image_size: int) -> tf.data.Dataset:
        """Unbatched ``(image, label)`` pairs in order; images float32 ``[0, 255]``.

        Images are decoded in parallel and kept in memory under the
        ``decoded_memory`` budget, so the second pass over the data reads no file.
        The dataset is memoised per ``image_size``.

        Args:
            image_size: int. Side of the square images.

        Returns:
            ``tf.data.Dataset`` of ``(image_size, image_size, 3)`` float32 images and
            their labels.

        Example:
            >>> data = from_arrays(np.zeros((2, 28, 28), "uint8"), [0, 1])
            >>> next(iter(data.decoded(32)))[0].shape
            TensorShape([32, 32, 3])
        """
        _check_positive(image_size=image_size)
        if image_size not in self._decoded:
            elements = self._elements(np.arange(len(self)), image_size)
            self._decoded[image_size] = elements.map(
                lambda image, label: (tf.cast(image, tf.float32), label),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return self._decoded[image_size]

    def batches(
        self,
        image_size: int,
        batch_size: int,
        *,
        shuffle_seed: int | None = None,
        augment: keras.layers.Layer | None = None,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """Batches of float32 images in ``[0, 255]`` and their labels.

        The order is a pure function of ``shuffle_seed`` (a NumPy permutation, not
        TensorFlow's global seed), so a resumed run that passes ``seed + epoch`` sees
        exactly the order an uninterrupted run saw.

        Args:
            image_size: int. Side of the square images.
            batch_size: int. Images per batch.
            shuffle_seed: int or None. Seed of the order; ``None`` keeps data order
                (validation, evaluation, feature extraction).
            augment: keras layer or None. Applied to each batch in training mode,
                e.g. :func:`augmentation`. Pass it for training batches only.
            drop_remainder: bool. Drop the last incomplete batch. Defaults to False.

        Returns:
            A prefetched ``tf.data.Dataset``.

        Example:
            >>> data = from_arrays(np.zeros((5, 28, 28), "uint8"), [0, 1, 0, 1, 0])
            >>> [int(x.shape[0]) for x, _ in data.batches(32, 2, shuffle_seed=0)]
            [2, 2, 1]
        """
        _check_positive(image_size=image_size, batch_size=batch_size)
        order = np.arange(len(self))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self))
        batched = self._elements(order, image_size).batch(batch_size, drop_remainder=drop_remainder)
        batched = batched.map(lambda images, labels: (tf.cast(images, tf.float32), labels),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augment is not None:
            batched = batched.map(
                lambda images, labels: (augment(images, training=True), labels),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return batched.prefetch(tf.data.AUTOTUNE)

    def worker_batches(
        self,
        image_size: int,
        global_batch: int,
        context: tf.distribute.InputContext,
        *,
        shuffle_seed: int | None = None,
        augment: keras.layers.Layer | None = None,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """One input pipeline's share of :meth:`batches`: per-replica batches of its own
        images only (``strategy.distribute_datasets_from_function``).

        Replica ``r`` of ``R = context.num_replicas_in_sync`` (this pipeline holds
        replicas ``id * R/P`` to ``(id+1) * R/P - 1`` of ``P`` pipelines) gets, at step
        ``k``, the images of global batch ``k`` at positions ``r, r+R, r+2R, ...``, so
        every step trains on exactly the global batch :meth:`batches` would give, and a
        worker decodes only its images. Every pipeline yields the same number of
        batches: where the last global batch leaves a replica nothing, it gets an
        empty batch (the step counts examples, not batches).

        Args:
            image_size: int. Side of the square images.
            global_batch: int. Images per step over all replicas.
            context: tf.distribute.InputContext. Which pipeline this is.
            shuffle_seed, augment, drop_remainder: as in :meth:`batches`.

        Returns:
            A prefetched ``tf.data.Dataset`` of per-replica batches, in replica order.

        Example:
            >>> data = from_arrays(np.zeros((5, 8, 8), "uint8"), [0, 1, 0, 1, 0])
            >>> context = tf.distribute.InputContext(2, 1, 2)
            >>> [int(x.shape[0]) for x, _ in data.worker_batches(8, 4, context)]
            [2, 0]
        """
        _check_positive(image_size=image_size, global_batch=global_batch)
        replicas, pipelines = context.num_replicas_in_sync, context.num_input_pipelines
        if global_batch % replicas or replicas % pipelines:
            raise ConfigError(
                f"The global batch must split evenly over replicas and replicas over input "
                f"pipelines; received global_batch={global_batch}, replicas={replicas}, "
                f"input pipelines={pipelines}.")
        order = np.arange(len(self))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self))
        steps = len(order) // global_batch if drop_remainder else -(-len(order) // global_batch)
        local = replicas // pipelines
        mine = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)
        per_replica = global_batch // replicas
        full = len(order) // global_batch
        # Full steps: this pipeline's positions of each global batch, replica by replica.
        rows = order[:full * global_batch].reshape(full, per_replica, replicas)
        parts = [self._elements(rows[:, :, list(mine)].transpose(0, 2, 1).reshape(-1),
                                image_size).batch(per_replica)] if full else []
        if steps > full:  # the last, partial global batch: as evenly as it goes
            rest = order[full * global_batch:]
            for replica in mine:
                share = rest[replica::replicas]
                if len(share):
                    parts.append(self._elements(share, image_size).batch(len(share)))
                else:
                    first = self._elements(order[:1], image_size).batch(1)
                    parts.append(first.map(lambda x, y: (x[:0], y[:0])))
        if not parts:
            raise DataError(f"Expected at least one batch; received {len(order)} images for a "
                            f"global batch of {global_batch} with drop_remainder.")
        batched = parts[0]
        for part in parts[1:]:
            batched = batched.concatenate(part)
        batched = batched.map(lambda images, labels: (tf.cast(images, tf.float32), labels),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augment is not None:
            batched = batched.map(
                lambda images, labels: (augment(images, training=True), labels),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return batched.prefetch(tf.data.AUTOTUNE)

    def _elements(self, order: np.ndarray, image_size: int) -> tf.data.Dataset:
        """``(image, label)`` for each index in ``order``; images uint8 (files) or as stored.

        Pixels are fetched by index through ``tf.numpy_function`` so that neither the
        decoded images nor a large array is copied into the TensorFlow graph.
        """
        labels = self.labels[order].astype(np.float32 if self.multilabel else np.int64)
        if self.files is not None:
            return self._file_elements(order, labels, image_size)
        load = self._array_loader(image_size)
        indices = tf.data.Dataset.from_tensor_slices((order, labels))
        return indices.map(
            lambda index, label: (load(index), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def _decoders(self) -> np.ndarray:
        if self.use_pil is None:  # built without from_folder: read the headers once
            checks = inspect_all(self.files, decode=False)
            self.use_pil = np.asarray([check.decoder == "pil" for check in checks], bool)
        return self.use_pil

    def _kept(self, image_size: int):
        """``(store, filled, rows)`` of decoded pixels at ``image_size``, or None past
        the budget (every epoch decodes then)."""
        if image_size not in self._pixels:
            need = (self._budget_images or len(self)) * image_size * image_size * 3
            if need > decoded_memory_budget(self.decoded_memory):
                return None
            # np.zeros maps untouched pages lazily: memory grows as images are decoded.
            self._pixels[image_size] = (np.zeros((len(self), image_size, image_size, 3),
                                                 np.uint8), np.zeros(len(self), bool), None)
        return self._pixels[image_size]

    def _file_elements(self, order: np.ndarray, labels: np.ndarray,
                       image_size: int) -> tf.data.Dataset:
        use_pil = self._decoders()[order]
        kept = self._kept(image_size)
        if kept is None:
            pixels = file_pixels([self.files[i] for i in order], use_pil, image_size)
            return tf.data.Dataset.zip(pixels, tf.data.Dataset.from_tensor_slices(labels))
        store, filled, rows = kept
        rows = order if rows is None else rows[order]
        if filled[rows].all():
            def read(row: tf.Tensor) -> tf.Tensor:
                image = tf.numpy_function(lambda r: store[r], [row], tf.uint8, stateful=False)
                return tf.ensure_shape(image, (image_size, image_size, 3))

            elements = tf.data.Dataset.from_tensor_slices((rows, labels))
            return elements.map(lambda row, label: (read(row), label),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        def keep(row: np.int64, image: np.ndarray) -> np.ndarray:
            store[row] = image
            filled[row] = True
            return image

        def kept_image(row, image, label):
            image = tf.numpy_function(keep, [row, image], tf.uint8, stateful=True)
            return tf.ensure_shape(image, (image_size, image_size, 3)), label

        pixels = file_pixels([self.files[i] for i in order], use_pil, image_size)
        elements = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(rows), pixels,
                                       tf.data.Dataset.from_tensor_slices(labels))
        return elements.map(kept_image, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)

    def _array_loader(self, image_size: int):
        height, width, channels = _image_shape(self.images)

        def load(index: tf.Tensor) -> tf.Tensor:
            dtype = tf.as_dtype(self.images.dtype)
            image = tf.numpy_function(lambda i: self.images[i], [index], dtype, stateful=False)
            image = tf.reshape(image, (height, width, channels))
            if channels == 1:
                image = tf.repeat(image, 3, axis=-1)
            elif channels == 4:
                image = image[..., :3]  # alpha is not a colour channel
            if (height, width) != (image_size, image_size):
                image = tf.image.resize(image, (image_size, image_size), method="bilinear")
            return tf.cast(image, tf.float32)

        return load


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffle (and augmentation) seed of one training epoch.

    A pure function of the run's seed and the epoch, so a resumed run sees the order
    an uninterrupted one saw, and training on cached features sees the order that
    training on images does (``ImageData.batches(shuffle_seed=epoch_seed(...))``).

    Example:
        >>> epoch_seed(5, 2)
        5002
    """
    return int(seed) * 1000 + int(epoch)


def _content_sample(path: str, size: int) -> bytes:
    """SHA-256 of a file's first and last blocks (its whole content when small)."""
    with open(path, "rb") as handle:
        head = handle.read(CONTENT_SAMPLE_BYTES)
        tail = b""
        if size > 2 * CONTENT_SAMPLE_BYTES:
            handle.seek(-CONTENT_SAMPLE_BYTES, os.SEEK_END)
            tail = handle.read()
        elif size > CONTENT_SAMPLE_BYTES:
            tail = handle.read()
    return hashlib.sha256(head + tail).digest()


def _image_shape(images: np.ndarray) -> tuple[int, int, int]:
    if images.ndim == 3:
        return images.shape[1], images.shape[2], 1
    return images.shape[1], images.shape[2], images.shape[3]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; received {name}={value!r}.")


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
        _check_positive(image_size=image_size)
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


def is_image_data(data: Any) -> bool:
    """Whether ``data`` is an :class:`ImageData` (or quacks like one)."""
    return hasattr(data, "batches") and hasattr(data, "fingerprint")


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


def augmentation(
    names: Sequence[str] | str = AUGMENTATIONS, seed: int | None = None
) -> keras.Sequential | None:
    """Random augmentation layers for training batches of pixels in ``[0, 255]``.

    Args:
        names: sequence of str, or a comma-separated str. Any of ``"flip"``
            (horizontal), ``"rotation"``, ``"zoom"``, ``"contrast"``, ``"translate"``,
            each by ±10%. Defaults to all five.
        seed: int or None. Seed of the random layers.

    Returns:
        A ``keras.Sequential`` named ``"augmentation"``, or None when ``names`` is empty.

    Raises:
        ConfigError: an unknown name.

    Example:
        >>> [layer.name for layer in augmentation("flip,zoom").layers]
        ['flip', 'zoom']
    """
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"Unknown augmentation(s) {unknown}; choose from {list(AUGMENTATIONS)}.")
    if not names:
        return None
    return keras.Sequential(
        [_augmentation_layer(name, _offset(seed, i)) for i, name in enumerate(names)],
        name="augmentation",
    )


def _offset(seed: int | None, index: int) -> int | None:
    # Distinct seeds per layer: equal seeds would correlate flips with rotations.
    return None if seed is None else seed + index


def _augmentation_layer(name: str, seed: int | None) -> keras.layers.Layer:
    layers = keras.layers
    if name == "flip":
        return layers.RandomFlip("horizontal", seed=seed, name=name)
    if name == "rotation":
        return layers.RandomRotation(AUGMENTATION_FACTOR, seed=seed, name=name)
    if name == "zoom":
        return layers.RandomZoom(AUGMENTATION_FACTOR, seed=seed, name=name)
    if name == "translate":
        return layers.RandomTranslation(AUGMENTATION_FACTOR, AUGMENTATION_FACTOR, seed=seed,
                                        name=name)
    return layers.RandomContrast(AUGMENTATION_FACTOR, seed=seed, name=name)

"""Labelled images in TFRecord shards: ``--data 'gs://bucket/train-*.tfrecord'``.

The schema is the one TensorFlow's own image pipelines write (TF-Slim's
``build_imagenet_data.py``, the TPU reference models, Model Maker): one
``tf.train.Example`` per image with

* ``image/encoded``: bytes, the encoded image (JPEG, PNG, GIF or BMP);
* ``image/class/label``: int64, the class id, counted from 0;
* ``image/class/text``: bytes, optional, the class name.

Class names come from ``image/class/text`` where the records carry it, else from a
``labels.txt`` next to the shards (one name a line, in id order), else the ids
themselves (``"0"``, ``"1"``, ...). Shard patterns are globbed with ``tf.io.gfile``, so
``gs://`` and other TensorFlow file systems work as local paths do.

The shards are read once, with TensorFlow's record reader: each encoded image is
written unchanged (not decoded) into a cache folder, and the result is the same
:class:`kerastl.ImageData` a class folder gives, so the pre-flight check, the
decoded-memory budget, splits, evaluation and resuming behave exactly as for
folders, and decoding runs in ``tf.data`` with TensorFlow's ops. Memory stays
bounded (the bytes are streamed to disk); the cache takes the shards' size on disk
and is reused while the shards are unchanged.

Example:
    >>> data = from_tfrecords("data/train-*.tfrecord")  # doctest: +SKIP
    >>> write_tfrecords("data/train", images, labels, ["cat", "dog"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.errors import DataError
from ..core.files import atomic_file
from .image_data import ImageData
from .tables import from_files

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
TEXT_KEY = "image/class/text"
LABELS_FILE = "labels.txt"
# Where unpacked shards go (KERASTL_CACHE overrides the folder above it).
CACHE_ENV = "KERASTL_CACHE"
_MAGIC = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def is_tfrecords(path: str | os.PathLike) -> bool:
    """Whether ``path`` names TFRecord shards (a file or glob with ``.tfrecord`` in it).

    Example:
        >>> is_tfrecords("gs://b/train-*.tfrecord"), is_tfrecords("data/train")
        (True, False)
    """
    return ".tfrecord" in os.path.basename(os.fspath(path)).lower()


def shard_files(pattern: str | os.PathLike) -> list[str]:
    """The shards a pattern names, sorted, globbed through ``tf.io.gfile``.

    Raises:
        DataError: no file matches.

    Example:
        >>> shard_files("/no/such/train-*.tfrecord")
        Traceback (most recent call last):
        ...
        kerastl.core.errors.DataError: No TFRecord shard matches '/no/such/train-*.tfrecord'.
    """
    pattern = os.fspath(pattern)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise DataError(f"No TFRecord shard matches {pattern!r}.")
    return files


def from_tfrecords(pattern: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                   cache_dir: str | os.PathLike | None = None, **check: Any) -> ImageData:
    """Read TFRecord shards in the schema above into an :class:`kerastl.ImageData`.

    Args:
        pattern: str or path. A shard or a glob (``"gs://bucket/train-*.tfrecord"``).
        class_names: sequence of str, optional. The classes, in id order (give the
            training classes when reading validation shards). Defaults to the
            records' ``image/class/text``, a sibling ``labels.txt`` or the ids.
        cache_dir: str or path, optional. Where the encoded images are unpacked.
            Defaults to ``$KERASTL_CACHE/tfrecords`` (``~/.cache/kerastl/tfrecords``).
        **check: ``on_bad_file``, ``image_size``, ``check_files``, ``decoded_memory``,
            as in :func:`kerastl.from_folder`.

    Returns:
        An :class:`kerastl.ImageData` of the unpacked files.

    Raises:
        DataError: no shard matches, a record lacks a feature, a label is outside
            the classes (each names the shard and record).
    """
    shards = shard_files(pattern)
    folder = _cache_folder(shards, cache_dir)
    files, ids, texts = [], [], {}
    features = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
                LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
                TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    for s, shard in enumerate(shards):
        for r, record in enumerate(tf.data.TFRecordDataset(shard)):
            where = f"{shard} record {r}"
            example = tf.train.Example.FromString(record.numpy()).features.feature
            for key in (IMAGE_KEY, LABEL_KEY):
                if key not in example:
                    raise DataError(f"{where}: no {key!r} feature; found {sorted(example)}. "
                                    f"Records need {IMAGE_KEY!r} (bytes) and {LABEL_KEY!r} "
                                    "(int64).")
            parsed = tf.io.parse_single_example(record, features)
            label = int(parsed[LABEL_KEY])
            encoded = parsed[IMAGE_KEY].numpy()
            text = parsed[TEXT_KEY].numpy().decode()
            if text:
                texts.setdefault(label, text)
            extension = next((ext for magic, ext in _MAGIC if encoded.startswith(magic)),
                             ".img")
            path = os.path.join(folder, f"{s:05d}-{r:07d}{extension}")
            if not os.path.isfile(path) or os.path.getsize(path) != len(encoded):
                # Written aside, then renamed: several workers unpacking the same shards
                # never see (or check) a half-written file. No fsync: a cache.
                with atomic_file(path, sync=False) as partial:
                    partial.write_bytes(encoded)
            files.append(path)
            ids.append((label, where))
    classes = (list(class_names) if class_names is not None
               else _class_names(shards, texts, max(label for label, _ in ids)))
    for label, where in ids:
        if not 0 <= label < len(classes):
            raise DataError(f"{where}: {LABEL_KEY} {label} is outside the {len(classes)} "
                            f"classes {classes} (ids count from 0).")
    data = from_files(files, [classes[label] for label, _ in ids], class_names=classes,
                      **check)
    return data


def record_image_sides(pattern: str | os.PathLike, *, sample: int) -> list[int]:
    """Shorter sides of the first ``sample`` images of the first shard (headers only)."""
    import io

    from PIL import Image

    sides = []
    feature = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    for record in tf.data.TFRecordDataset(shard_files(pattern)[0]).take(sample):
        encoded = tf.io.parse_single_example(record, feature)[IMAGE_KEY].numpy()
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sides


def write_tfrecords(prefix: str | os.PathLike, images: np.ndarray, labels: Sequence[int],
                    class_names: Sequence[str], *, shards: int = 2) -> list[str]:
    """Write images as PNG records in the schema above (tests, small conversions).

    Args:
        prefix: str or path. Shards are ``{prefix}-00000-of-00002.tfrecord``, ...
        images: array. ``(N, H, W, 3)`` uint8 pixels.
        labels: sequence of int. Class id of each image.
        class_names: sequence of str. Written as ``image/class/text``.
        shards: int. Number of shards (records are dealt round-robin). Defaults to 2.

    Returns:
        list of str. The shard paths.

    Example:
        >>> write_tfrecords("data/train", images, [0, 1], ["cat", "dog"])  # doctest: +SKIP
    """
    prefix = os.fspath(prefix)
    paths = [f"{prefix}-{s:05d}-of-{shards:05d}.tfrecord" for s in range(shards)]
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        feature = {
            IMAGE_KEY: _bytes(tf.io.encode_png(np.asarray(image, np.uint8)).numpy()),
            LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            TEXT_KEY: _bytes(str(class_names[int(label)]).encode()),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return paths


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _class_names(shards: list[str], texts: dict[int, str], largest: int) -> list[str]:
    if texts:
        return [texts.get(i, str(i)) for i in range(largest + 1)]
    sibling = os.path.join(os.path.dirname(shards[0]), LABELS_FILE)
    if tf.io.gfile.exists(sibling):
        with tf.io.gfile.GFile(sibling) as lines:
            return [line.strip() for line in lines if line.strip()]
    return [str(i) for i in range(largest + 1)]


def _cache_folder(shards: list[str], cache_dir: str | os.PathLike | None) -> str:
    # One folder per set of shards, keyed by their names, sizes and modification times,
    # so a rewritten shard is unpacked again.
    digest = hashlib.sha256()
    for shard in shards:
        stat = tf.io.gfile.stat(shard)
        digest.update(f"{shard}\0{stat.length}\0{stat.mtime_nsec}\n".encode())
    root = cache_dir or os.path.join(
        os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "kerastl")),
        "tfrecords")
    folder = os.path.join(os.fspath(root), digest.hexdigest()[:16])
    os.makedirs(folder, exist_ok=True)
    return folder

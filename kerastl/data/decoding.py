"""Image files → uint8 pixels inside ``tf.data``, on every core, under a memory budget.

Files the header scan found ordinary (plain RGB or grayscale JPEG and PNG, see
:func:`kerastl.data.images.decoder_for`) are decoded by TensorFlow's own ops in a parallel
``tf.data`` map, so decoding uses every core; the few that need PIL (EXIF rotation,
CMYK, 16-bit, palette or alpha, GIF, BMP) go through :func:`kerastl.data.images.open_rgb`
in the same parallel map (PIL releases the GIL while it decodes). Both are resized by
one op, ``tf.image.resize`` bilinear with antialiasing, rounded to uint8: within 1 of
PIL's own bilinear resize, which the data layer used before (max abs difference 1,
mean 0.06-0.22 over JPEG and PNG, RGB and grayscale, 28-500 px sources at 32, 128
and 224 px; ``tests/test_decoding.py`` holds it to that).

:func:`check_files` is the pre-flight check ``from_folder`` runs (``full``, ``header``
or ``none``, see :data:`CHECK_FILES`); :func:`decoded_memory_budget` how many bytes
of decoded images may stay in RAM between epochs.

Example:
    >>> budget = decoded_memory_budget("64M")
    >>> budget
    67108864
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import PIL
import tensorflow as tf

from ..config.choices import CHECK_FILES
from ..core.errors import ConfigError, DataError, parse_size
from .images import DEFAULT_MAX_PIXELS, inspect_all, inspect_image, open_rgb

# full: decode every file before training (one decode per file: the pixels are kept
# when they fit the budget); header: read headers only (format, size, mode, EXIF),
# so truncated data stops training when it is reached; none: open no file (every
# file goes to TensorFlow's decoders, no EXIF rotation or CMYK conversion).
# How files become pixels; part of every data fingerprint and feature-cache key, so
# features computed from another decoder are never reused.
DECODE_METHOD = (f"tf {tf.__version__} decode_jpeg INTEGER_ACCURATE/decode_image, "
                 f"PIL {PIL.__version__} open_rgb where needed; tf.image.resize bilinear "
                 "antialias, floor(x+0.5) uint8; arrays: tf.image bilinear")
# Share of the memory available at load time that decoded images may fill
# (``decoded_memory="auto"``); past it every epoch decodes again (on every core).
DECODED_MEMORY_SHARE = 0.2
# ...and never more than this. Images are kept all or none, so the most a run's peak
# memory can grow with its data is this cap: past it the run streams and its peak no
# longer grows with the number of images (measured: Fashion-MNIST at 128 px, 15,000
# images kept 1,819 MB, 60,000 streamed 1,133 MB). A fifth of a large machine's memory
# alone let the 60,000 images' 2.9 GB stay (+2,118 MB). 1 GiB still keeps what small
# sets need to skip decoding after the first epoch (7,000 images at 224 px, 21,000 at
# 128 px: Flowers' 3,670 at 224 px fit).
DECODED_MEMORY_CAP = 2**30
# Images per element of the check's pipeline: fewer Python round trips per image.
_CHECK_BATCH = 64


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``, else free pages).

    Example:
        >>> available_memory() > 0
        True
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30  # no way to tell: keep what a small notebook VM holds


def decoded_memory_budget(setting: str | int | None = "auto") -> int:
    """Bytes of decoded images that may stay in RAM, from a ``decoded_memory`` setting.

    Args:
        setting: ``"auto"`` or None (:data:`DECODED_MEMORY_SHARE` of the memory
            available now, at most :data:`DECODED_MEMORY_CAP`), a number of
            bytes, or a size such as ``"512M"``, ``"2G"``; ``0`` keeps nothing
            (every epoch decodes).

    Returns:
        int. The budget in bytes.

    Raises:
        ConfigError: a setting that is not a size.

    Example:
        >>> decoded_memory_budget("1.5k"), decoded_memory_budget(0)
        (1536, 0)
    """
    if setting is None or setting == "auto":
        return min(DECODED_MEMORY_CAP, int(DECODED_MEMORY_SHARE * available_memory()))
    if isinstance(setting, (int, np.integer)) and not isinstance(setting, bool):
        if setting < 0:
            raise ConfigError(f"decoded_memory must be >= 0; received decoded_memory={setting}.")
        return int(setting)
    return parse_size("decoded_memory", str(setting))


def truncated_files(files: Sequence[str]) -> list[str]:
    """JPEG and PNG files whose end marker is missing (``FFD9``, ``IEND``): truncated.

    Reads the last kilobyte of each file only, in threads, so naming the file that
    stopped a ``check_files="header"`` run costs no decoding.

    Example:
        >>> truncated_files([])
        []
    """
    from concurrent.futures import ThreadPoolExecutor

    def cut(path: str) -> bool:
        try:
            with open(path, "rb") as handle:
                head = handle.read(8)
                handle.seek(max(0, os.path.getsize(path) - 1024))
                tail = handle.read()
        except OSError:
            return False
        if head.startswith(b"\xff\xd8"):
            return b"\xff\xd9" not in tail
        if head.startswith(b"\x89PNG"):
            return b"IEND" not in tail
        return False

    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        return [path for path, bad in zip(files, pool.map(cut, files), strict=True) if bad]


def decode_failure(error: Exception, files: Sequence[str], check: str) -> DataError:
    """One line for a decode error met in training after a ``header``/``none`` check.

    Example:
        >>> error = decode_failure(ValueError("jpeg::Uncompress failed"), [], "header")
        >>> "--check-files header" in str(error) and "Uncompress failed" in str(error)
        True
    """
    bad = truncated_files(files)
    what = (f"{len(bad)} truncated file(s): {', '.join(map(repr, bad[:5]))}"
            f"{' ...' if len(bad) > 5 else ''}" if bad
            else str(error).strip().splitlines()[-1].split(": ")[-1] if str(error).strip()
            else type(error).__name__)
    return DataError(f"An image could not be decoded during training (--check-files {check} "
                     f"does not decode files before training): {what}. Rerun with "
                     "--check-files full (and --on-bad-file skip to leave bad files out).")


def _pil_pixels(path: bytes) -> np.ndarray:
    return np.asarray(open_rgb(path.decode()), dtype=np.uint8)


# How each file is decoded: the branches of file_pixels, chosen per file from the
# header scan, so no per-image tf.cond runs (measured: a third of the throughput).
_JPEG, _OTHER, _PIL = 0, 1, 2
_JPEG_EXTENSIONS = (".jpg", ".jpeg")


def _decoders(route: int):
    """The graph function decoding one path by ``route``: uint8 ``(height, width, 3)``."""
    def jpeg(path: tf.Tensor) -> tf.Tensor:
        # The accurate integer DCT is libjpeg's default, which PIL uses: equal pixels
        # (decode_image's faster DCT differs by up to 7).
        return tf.io.decode_jpeg(tf.io.read_file(path), channels=3,
                                 dct_method="INTEGER_ACCURATE")

    def other(path: tf.Tensor) -> tf.Tensor:
        return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)

    def pil(path: tf.Tensor) -> tf.Tensor:
        return tf.numpy_function(_pil_pixels, [path], tf.uint8, stateful=False)

    return {_JPEG: jpeg, _OTHER: other, _PIL: pil}[route]


def _routes(files: Sequence[str], use_pil: np.ndarray) -> np.ndarray:
    # TensorFlow-decoded files carry their real format's extension: the header scan
    # sends a misnamed file to PIL (kerastl.data.images._inspect).
    jpeg = np.asarray([str(f).lower().endswith(_JPEG_EXTENSIONS) for f in files], bool)
    return np.where(np.asarray(use_pil, bool), _PIL, np.where(jpeg, _JPEG, _OTHER))


def resize_pixels(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize with antialiasing (PIL's BILINEAR filter), rounded to uint8."""
    def resize(antialias: bool):
        return lambda: tf.image.resize(image, (image_size, image_size), method="bilinear",
                                       antialias=antialias)

    # Antialiasing widens the filter only where the image shrinks; enlarging, the plain
    # kernel gives the same pixels at two thirds of the cost (measured, 28 -> 128 px).
    shrinks = tf.reduce_max(tf.shape(image)[:2]) > image_size
    resized = tf.cond(shrinks, resize(True), resize(False))
    # PIL rounds halves up; tf.round rounds them to even.
    return tf.cast(tf.clip_by_value(tf.floor(resized + 0.5), 0.0, 255.0), tf.uint8)


def file_pixels(files: Sequence[str], use_pil: np.ndarray,
                image_size: int | None) -> tf.data.Dataset:
    """``tf.data`` of each file's uint8 RGB pixels, in order, decoded in parallel.

    JPEG files go to ``tf.io.decode_jpeg`` (the accurate integer DCT, as PIL), other
    files to ``tf.io.decode_image``, those marked ``use_pil`` to
    :func:`kerastl.data.images.open_rgb`; each branch is its own parallel map, and
    ``choose_from_datasets`` puts them back in file order. All are resized by
    :func:`resize_pixels`.

    Args:
        files: sequence of str. The files, in the order wanted.
        use_pil: bool array, one per file. Which go through PIL
            (see :func:`kerastl.data.images.decoder_for`).
        image_size: int or None. Side to resize to; None keeps each file's size.

    Returns:
        An unbatched ``tf.data.Dataset`` of uint8 ``(image_size, image_size, 3)``
        images (``(height, width, 3)`` without a size).

    Example:
        >>> file_pixels(["cat.png"], np.zeros(1, bool), 32)  # doctest: +SKIP
    """
    files = np.asarray(files, dtype=object).astype(str)
    routes = _routes(files, use_pil)

    def branch(route: int) -> tf.data.Dataset:
        decode = _decoders(route)

        def pixels(path: tf.Tensor) -> tf.Tensor:
            image = tf.ensure_shape(decode(path), (None, None, 3))
            return image if image_size is None else resize_pixels(image, image_size)

        paths = tf.data.Dataset.from_tensor_slices(files[routes == route] if len(files)
                                                   else files)
        return paths.map(pixels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    present = sorted(set(routes.tolist())) or [_OTHER]
    if len(present) == 1:
        return branch(present[0])
    choices = np.searchsorted(present, routes).astype(np.int64)
    return tf.data.Dataset.choose_from_datasets(
        [branch(route) for route in present], tf.data.Dataset.from_tensor_slices(choices))


def check_files(files: Sequence[str], mode: str = "full", *, image_size: int | None = None,
                store: np.ndarray | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, str], np.ndarray]:
    """The pre-flight check of ``from_folder``: bad files by path, and who decodes each.

    ``full`` reads every header in parallel threads, then decodes every file once,
    on every core, exactly as training will (:func:`file_pixels`), writing row ``i``
    of ``store`` when one is given: a good file is never decoded twice. A file the
    pipeline cannot decode is checked again by PIL for the reason (the doctor's
    reasons); one PIL reads fine is then routed to PIL. ``header`` reads headers
    only; ``none`` opens nothing.

    Args:
        files: sequence of str. The files.
        mode: str. One of :data:`CHECK_FILES`. Defaults to ``"full"``.
        image_size: int, optional. Size ``store`` rows are decoded at.
        store: uint8 array ``(len(files), image_size, image_size, 3)``, optional.
            Receives each good file's pixels (``full`` only).
        max_pixels: int. See :func:`kerastl.data.images.inspect_image`.

    Returns:
        ``(bad, use_pil)``: path -> one-line reason in file order, and a bool per file.

    Raises:
        ConfigError: an unknown ``mode``.

    Example:
        >>> check_files(["cats/1.jpg"], "none")
        ({}, array([False]))
    """
    if mode not in CHECK_FILES:
        raise ConfigError(f"check_files must be one of {CHECK_FILES}; received "
                          f"check_files={mode!r}.")
    use_pil = np.zeros(len(files), bool)
    if mode == "none":
        return {}, use_pil
    checks = inspect_all(files, max_pixels, decode=False)
    bad = {check.path: check.reason for check in checks if not check.ok}
    use_pil[:] = [check.decoder == "pil" for check in checks]
    if mode == "full":
        # Without a store only whether a file decodes matters: no resize then.
        image_size = image_size if store is not None else None
        good = np.asarray([check.ok for check in checks], bool)
        for index in _undecodable(files, good, use_pil, image_size, store):
            check = inspect_image(files[index], max_pixels=max_pixels)
            if not check.ok:
                bad[files[index]] = check.reason
            else:  # TensorFlow refused what PIL reads: PIL decodes it
                use_pil[index] = True
                _decode_rows(files, [index], use_pil, image_size, store)
        bad = {path: bad[path] for path in files if path in bad}  # file order
    return bad, use_pil


def _undecodable(files, good, use_pil, image_size, store) -> list[int]:
    """Indices among ``good`` that :func:`file_pixels` cannot decode."""
    rows = np.flatnonzero(good)
    decoded = _decode_rows(files, rows, use_pil, image_size, store)
    return sorted(set(rows.tolist()) - decoded)


def _decode_rows(files, rows, use_pil, image_size, store) -> set[int]:
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return set()
    pixels = file_pixels([files[i] for i in rows], use_pil[rows], image_size)
    if store is None:
        # Only whether it decodes matters; the size keeps the decode from being pruned.
        pixels = pixels.map(tf.size)
    # Errors are per element: a failed file's row is simply missing from the output
    # (zip consumes one row for each element, failed or not).
    indexed = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(rows), pixels)
    indexed = indexed.ignore_errors()
    if store is not None:
        indexed = indexed.batch(_CHECK_BATCH)
    decoded: set[int] = set()
    for batch_rows, images in indexed.prefetch(2).as_numpy_iterator():
        if store is None:
            decoded.add(int(batch_rows))
        else:
            store[batch_rows] = images
            decoded.update(batch_rows.tolist())
    return decoded

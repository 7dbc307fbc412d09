"""Image files: which ones a dataset folder holds, and how each one decodes.

One module for what every reader of images shares, so that what the doctor accepts
is exactly what training and prediction decode:

* :func:`scan_folder` lists a class-per-folder dataset (hidden and system files,
  ``.ipynb_checkpoints``, ``__MACOSX`` are never classes or images);
* :func:`inspect_image` / :func:`find_bad_files` check files before anything is
  decoded (truncated JPEGs, text files renamed ``.png``, decompression bombs);
* :func:`open_rgb` decodes one file to RGB (EXIF orientation, CMYK, 16-bit,
  palette and alpha handled);
* :func:`decoder_for` says which files TensorFlow's own decoders read exactly as
  :func:`open_rgb` does (plain RGB or grayscale JPEG and PNG), and which need PIL.

Example:
    >>> is_hidden(".ipynb_checkpoints"), is_hidden("cats")
    (True, False)
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from ..core.errors import DataError

SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): ~89.5M pixels,
# about a 9500x9500 photo or 256 MB of RGB. Larger files are refused unread.
DEFAULT_MAX_PIXELS = 89_478_485

# Formats PIL may report for each extension; MPO is the multi-picture JPEG that
# many phone cameras write under .jpg.
_FORMATS_FOR_EXTENSION = {
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".png": {"PNG"},
    ".bmp": {"BMP", "DIB"},
    ".gif": {"GIF"},
}
_EXTENSION_FOR_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_SYSTEM_FILES = {"Thumbs.db", "desktop.ini"}
# Exceptions PIL raises for files it cannot decode (truncated, corrupt, bad headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


@dataclass
class ImageCheck:
    """What the doctor found in one file.

    Attributes:
        path: str. The file.
        ok: bool. True when training can decode it (possibly after a conversion).
        reason: str. Why it cannot be used, one line; empty when ``ok``.
        format: str or None. Real format from the file's content (``"PNG"``).
        mode: str or None. PIL mode as stored (``"CMYK"``, ``"I;16"``, ``"RGBA"``).
        size: tuple or None. ``(width, height)`` from the header.
        notes: list of str. Conversions training applies, e.g. ``"CMYK converted to
            RGB"``, ``"EXIF orientation 6 applied"``.
        decoder: str. ``"tf"`` when TensorFlow's decoders read the file as
            :func:`open_rgb` does, ``"pil"`` when it needs PIL (see
            :func:`decoder_for`).
    """

    path: str
    ok: bool = True
    reason: str = ""
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    decoder: str = "tf"


@dataclass
class FolderScan:
    """The files of a class-per-folder dataset, before any file is read.

    Attributes:
        root: str. The dataset folder.
        class_files: dict. Class name -> sorted paths of every non-hidden file under
            that class folder (images or not), in sorted class order.
        hidden: list of str. Hidden/system files and folders that were ignored.
        loose_files: list of str. Files directly in ``root``, which belong to no class.
    """

    root: str
    class_files: dict[str, list[str]]
    hidden: list[str]
    loose_files: list[str]


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is never data (``.DS_Store``, ``__MACOSX``...).

    Example:
        >>> is_hidden(".ipynb_checkpoints"), is_hidden("cats")
        (True, False)
    """
    return name.startswith((".", "__")) or name in _SYSTEM_FILES


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """List the class folders and files of ``root`` without reading any file.

    Every non-hidden subfolder of ``root`` is a class; its files are collected
    recursively, skipping hidden files and folders.

    Args:
        root: str or path. Folder with one subfolder per class, a CSV whose
            ``path`` column names the files (relative to the CSV), or TFRecord shards.

    Returns:
        A :class:`FolderScan`.

    Raises:
        DataError: ``root`` does not exist or is not a folder.

    Example:
        >>> scan_folder("data/train").class_files.keys()  # doctest: +SKIP
        dict_keys(['cats', 'dogs'])
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DataError(
            f"Data folder not found: {root!r}. Pass a folder with one subfolder per "
            f"class, e.g. {os.path.join(root, 'cats', '1.jpg')}."
        )
    if not os.path.isdir(root):
        raise DataError(
            f"Expected a folder of class subfolders, got the file {root!r}. Pass the folder "
            "that holds one subfolder per class."
        )
    scan = FolderScan(root=root, class_files={}, hidden=[], loose_files=[])
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if is_hidden(entry.name):
            scan.hidden.append(entry.path)
        elif entry.is_dir():
            scan.class_files[entry.name] = _files_under(entry.path, scan.hidden)
        else:
            scan.loose_files.append(entry.path)
    return scan


def _files_under(folder: str, hidden: list[str]) -> list[str]:
    files = []
    for parent, dirnames, filenames in os.walk(folder):
        hidden += [os.path.join(parent, name) for name in dirnames if is_hidden(name)]
        # Pruning in place stops os.walk from descending into hidden folders.
        dirnames[:] = sorted(name for name in dirnames if not is_hidden(name))
        for name in sorted(filenames):
            target = files if not is_hidden(name) else hidden
            target.append(os.path.join(parent, name))
    return files


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make PIL raise on truncated files and leave the size limit to the doctor.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a process-wide switch that some notebooks
    turn on; it is restored on exit. PIL's DecompressionBombWarning is silenced
    because :func:`inspect_image` refuses large images itself, with the path.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert any PIL mode to 8-bit RGB with EXIF orientation applied; say what changed."""
    notes = []
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated ({frames} frames): first frame used")
    mode = image.mode
    if mode in _HIGH_BIT_MODES or mode == "F":
        # PIL's convert("L") clips 16-bit values at 255 (a white image): scale instead.
        pixels = np.asarray(image, dtype=np.float64)
        if mode != "F":
            pixels = pixels / 257.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
        notes.append(f"{'32-bit float' if mode == 'F' else '16-bit'} scaled to 8-bit")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Via RGBA: converting a transparent palette straight to RGB warns in PIL.
        image = image.convert("RGBA")
        notes.append(f"{mode} alpha dropped" if mode != "P" else "palette transparency dropped")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale converted to RGB")
    elif mode == "P":
        notes.append("palette converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} converted to RGB")
    return image.convert("RGB"), notes


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image the way training sees it: 8-bit RGB, EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images all become
    8-bit RGB. Call :func:`inspect_image` first for files you have not checked.

    Args:
        path: str or path. Image file.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``.

    Example:
        >>> open_rgb("cat.png").mode  # doctest: +SKIP
        'RGB'
    """
    with Image.open(path) as image:
        image.load()
        rgb, _ = _to_rgb(image)
    return rgb


# Header facts under which TensorFlow's decode_jpeg/decode_png (channels=3) give the
# pixels open_rgb gives: 8-bit RGB or grayscale, no orientation to apply, no alpha or
# palette transparency (PIL drops alpha by its own rules), not a multi-picture file.
_TF_FORMATS = {"JPEG", "PNG"}
_TF_MODES = {"RGB", "L"}


def decoder_for(image: Image.Image) -> str:
    """``"tf"`` if TensorFlow's own decoders read this opened file as :func:`open_rgb` does.

    Decided from the header alone (no pixel is decoded): plain 8-bit RGB or
    grayscale JPEG and PNG without EXIF orientation or transparency go to
    TensorFlow (``tf.io.decode_jpeg``/``decode_png`` inside ``tf.data``, on every
    core); EXIF-rotated, CMYK, 16-bit, palette, alpha, GIF and BMP files to PIL.

    Example:
        >>> decoder_for(Image.new("CMYK", (4, 4)))
        'pil'
    """
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    plain = (image.format in _TF_FORMATS and image.mode in _TF_MODES
             and orientation in (None, 1) and "transparency" not in image.info)
    return "tf" if plain else "pil"


def square_pixels(rgb: Image.Image, size: int) -> np.ndarray:
    """An RGB image resized to ``size`` x ``size`` (bilinear) as uint8 pixels.

    PIL's resize, for :func:`find_bad_files`'s ``decode_into``; training resizes in
    ``tf.data`` (:func:`kerastl.data.decoding.resize_pixels`), within 1 of it.
    """
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def inspect_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Check one file the way training will decode it, and note any conversion.

    The image size is read from the header and images over ``max_pixels`` are
    refused before any pixel is decoded; the rest are fully decoded with PIL's
    truncation check on, so a file that passes never fails mid-epoch.

    Args:
        path: str or path. The file.
        max_pixels: int. Largest ``width * height`` to decode. Defaults to PIL's own
            decompression-bomb limit (89,478,485). PIL itself still refuses images
            over twice its ``Image.MAX_IMAGE_PIXELS``.

    Returns:
        An :class:`ImageCheck`.

    Example:
        >>> check = inspect_image("scan.jpg")  # doctest: +SKIP
        >>> check.ok, check.notes  # doctest: +SKIP
        (True, ['CMYK converted to RGB'])
    """
    with _strict_decoding():
        return _inspect(os.fspath(path), max_pixels)


def _inspect(path: str, max_pixels: int, pixels_out: np.ndarray | None = None,
             decode: bool = True) -> ImageCheck:
    check = ImageCheck(path=path)
    extension = Path(path).suffix.lower()
    reason = _unreadable_reason(path, extension)
    if reason:
        return _refuse(check, reason)
    try:
        with Image.open(path) as image:
            check.format, check.mode, check.size = image.format, image.mode, image.size
            width, height = image.size
            if width * height > max_pixels:
                return _refuse(check, _too_large(width, height, max_pixels))
            if image.format not in _FORMATS_FOR_EXTENSION[extension]:
                better = _EXTENSION_FOR_FORMAT.get(image.format, f".{image.format.lower()}")
                check.notes.append(
                    f"{image.format} data named {extension} (still usable; rename it to {better})"
                )
            # A misnamed file goes to PIL: TensorFlow's branch is chosen by extension.
            named_right = image.format in _FORMATS_FOR_EXTENSION[extension]
            check.decoder = decoder_for(image) if named_right else "pil"
            if not decode:
                return check
            image.load()
            rgb, notes = _to_rgb(image)
            check.notes += notes
            if pixels_out is not None:
                pixels_out[...] = square_pixels(rgb, pixels_out.shape[0])
    except Image.DecompressionBombError:
        return _refuse(
            check,
            f"too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS:,} "
            "pixels, PIL's hard limit); resize it",
        )
    except UnidentifiedImageError:
        return _refuse(check, _not_an_image(path, extension))
    except _DECODE_ERRORS as error:
        return _refuse(check, f"truncated or corrupt ({error}); re-export or delete it")
    return check


def _unreadable_reason(path: str, extension: str) -> str:
    """Reasons found without opening the file as an image."""
    if extension not in SUPPORTED_EXTENSIONS:
        shown = extension or "(no extension)"
        return (
            f"unsupported file type {shown!r}: kerastl reads "
            f"{', '.join(SUPPORTED_EXTENSIONS)}; convert it to PNG/JPEG or remove it"
        )
    try:
        size = os.path.getsize(path)
    except OSError as error:
        return f"cannot read ({error.strerror}); check its permissions"
    return "empty file (0 bytes); delete it or copy it again" if size == 0 else ""


def _refuse(check: ImageCheck, reason: str) -> ImageCheck:
    check.ok, check.reason = False, reason
    return check


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"too large to decode safely ({width}x{height} = {width * height:,} pixels > "
        f"max_pixels={max_pixels:,}); resize it or raise max_pixels"
    )


def _not_an_image(path: str, extension: str) -> str:
    with open(path, "rb") as file:
        head = file.read(512)
    try:
        looks_like_text = b"\0" not in head and bool(head.decode("utf-8").strip())
    except UnicodeDecodeError:
        looks_like_text = False
    what = "text" if looks_like_text else "data PIL cannot identify"
    return f"not an image: the {extension} file holds {what}; delete it or replace it"


def find_bad_files(paths: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   decode_into: np.ndarray | None = None) -> dict[str, str]:
    """Pre-flight check: every file training could not decode, with the reason.

    Files are decoded in parallel threads (PIL releases the GIL while decoding).

    Args:
        paths: sequence of str. Files to check.
        max_pixels: int. See :func:`inspect_image`.
        decode_into: uint8 array ``(len(paths), size, size, 3)``, optional. Row ``i``
            receives file ``i`` as training decodes it (:func:`square_pixels`): the
            check decodes every file anyway, so training need not read it again.

    Returns:
        dict. Path -> one-line reason, in the order of ``paths``; empty when all are fine.

    Example:
        >>> find_bad_files(["cats/1.jpg", "cats/notes.txt"])  # doctest: +SKIP
        {'cats/notes.txt': "unsupported file type '.txt': ..."}
    """
    checks = inspect_all(paths, max_pixels, decode_into=decode_into)
    return {check.path: check.reason for check in checks if not check.ok}


def inspect_all(paths: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS, *,
                decode_into: np.ndarray | None = None, decode: bool = True) -> list[ImageCheck]:
    """:func:`inspect_image` of every path, in parallel threads, in order.

    ``decode_into`` as in :func:`find_bad_files`. With ``decode=False`` only the
    headers are read (format, size, mode, EXIF orientation: what
    ``--check-files header`` checks and :func:`decoder_for` needs); truncated pixel
    data is not found then.
    """
    def inspect(index: int) -> ImageCheck:
        row = None if decode_into is None else decode_into[index]
        return _inspect(os.fspath(paths[index]), max_pixels, row, decode)

    # The strict-decoding switches are process-wide, so they wrap the whole pool.
    with _strict_decoding(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(inspect, range(len(paths))))




# Files whose header a size estimate reads: enough for a stable median, cheap at any
# folder size (a header read is a few kilobytes; nothing is decoded).
SIZE_SAMPLE_FILES = 200


def native_image_side_of(files: Sequence[str], *, sample: int = SIZE_SAMPLE_FILES) -> int | None:
    """:func:`kerastl.data.sources.native_image_side` of a list of files (headers only)."""
    files = list(files)
    if len(files) > sample:
        files = [files[i * len(files) // sample] for i in range(sample)]
    sides = []
    for path in files:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return int(np.median(sides)) if sides else None

"""The dataset doctor: find every file that would break or silently skew training.

A class-per-folder image dataset fails in ways that surface late: a truncated JPEG
crashes epoch 3, a text file renamed ``.png`` stops the input pipeline, a CMYK or
16-bit image decodes to wrong colours, an EXIF-rotated phone photo trains sideways,
a ``.ipynb_checkpoints`` folder becomes a class. The doctor reads every file *before*
training, names each problem by path, and says what kerastl will do about it.

:func:`find_bad_files` is the fast pre-flight :func:`kerastl.data.from_folder` runs;
:func:`diagnose` is the full report, also available from the shell::

    python -m kerastl.doctor data/train --val-data data/val

Decoding (:func:`open_rgb`) lives here too, so that what the doctor accepts is
exactly what training decodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DataError

SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): ~89.5M pixels,
# about a 9500x9500 photo or 256 MB of RGB. Larger files are refused unread.
DEFAULT_MAX_PIXELS = 89_478_485
IMBALANCE_WARNING_RATIO = 10.0

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
    """

    path: str
    ok: bool = True
    reason: str = ""
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


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


@dataclass
class DoctorReport:
    """Everything :func:`diagnose` found, by path. ``str(report)`` prints it.

    Attributes:
        root: str. Training folder.
        val_root: str or None. Validation folder.
        class_counts: dict. Class -> usable images in the training folder.
        val_class_counts: dict. Class -> usable images in the validation folder.
        bad_files: dict. Path -> reason, for files training cannot use.
        notes: dict. Path -> conversions applied to usable files.
        empty_classes: list of str. Class folders (by path) with no usable image.
        hidden_ignored: list of str. Hidden files/folders that are not data.
        duplicates: list of (train path, validation path) with identical bytes.
        class_mismatch: dict. ``{"missing_in_val": [...], "extra_in_val": [...]}``
            when the two folders have different classes, else empty.
        imbalance_ratio: float. Largest over smallest non-empty training class.
        warnings: list of str. Problems that do not stop training but skew it.
    """

    root: str
    val_root: str | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    val_class_counts: dict[str, int] = field(default_factory=dict)
    bad_files: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)
    hidden_ignored: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    class_mismatch: dict[str, list[str]] = field(default_factory=dict)
    imbalance_ratio: float = 1.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when :func:`kerastl.data.load_splits` would accept the folders as they are."""
        return bool(self.class_counts) and not (
            self.bad_files or self.empty_classes or self.class_mismatch
        )

    def to_dict(self) -> dict:
        """The report as JSON-ready data (``--json``)."""
        data = asdict(self)
        data["duplicates"] = [list(pair) for pair in self.duplicates]
        data["ok"] = self.ok
        return data

    def __str__(self) -> str:
        title = f"kerastl doctor: {self.root}"
        if self.val_root:
            title += f" (validation: {self.val_root})"
        counts = ", ".join(f"{name} {count}" for name, count in self.class_counts.items())
        lines = [title, f"Classes ({len(self.class_counts)}): {counts or 'none found'}"]
        if self.val_class_counts:
            val_counts = ", ".join(f"{n} {c}" for n, c in self.val_class_counts.items())
            lines.append(f"Validation classes ({len(self.val_class_counts)}): {val_counts}")
        lines += _section("Bad files (training stops on these)", self.bad_files.items())
        lines += _section(
            "Empty classes", ((path, "no usable image") for path in self.empty_classes)
        )
        if self.class_mismatch:
            mismatch = ((key, ", ".join(names)) for key, names in self.class_mismatch.items())
            lines += _section("Train/validation class mismatch", mismatch)
        notes = ((path, "; ".join(items)) for path, items in self.notes.items())
        lines += _section("Converted when loaded (fine)", notes)
        lines += _section("Ignored (hidden)", ((path, "not data") for path in self.hidden_ignored))
        if self.warnings:
            lines += [f"Warnings ({len(self.warnings)}):"] + [f"  - {w}" for w in self.warnings]
        lines.append(_verdict(self))
        return "\n".join(lines)


def _section(title: str, rows) -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    return [f"{title} ({len(rows)}):"] + [f"  {key}: {value}" for key, value in rows]


def _verdict(report: DoctorReport) -> str:
    if report.ok:
        return "OK: every class folder has usable images."
    if not report.class_counts:
        return f"NOT OK: no class subfolders in {report.root}; put images in one folder per class."
    problems = []
    if report.bad_files:
        problems.append(
            f"{len(report.bad_files)} bad file(s): fix or delete them, or load with "
            "on_bad_file='skip' to leave them out"
        )
    if report.empty_classes:
        problems.append("empty class folder(s): add images or delete the folder")
    if report.class_mismatch:
        problems.append("validation classes differ: use the same class subfolders in both")
    return "NOT OK: " + "; ".join(problems) + "."


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
        root: str or path. Folder with one subfolder per class.

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


def _inspect(path: str, max_pixels: int) -> ImageCheck:
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
            image.load()
            check.notes += _to_rgb(image)[1]
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


def find_bad_files(paths: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, str]:
    """Pre-flight check: every file training could not decode, with the reason.

    Files are decoded in parallel threads (PIL releases the GIL while decoding).

    Args:
        paths: sequence of str. Files to check.
        max_pixels: int. See :func:`inspect_image`.

    Returns:
        dict. Path -> one-line reason, in the order of ``paths``; empty when all are fine.

    Example:
        >>> find_bad_files(["cats/1.jpg", "cats/notes.txt"])  # doctest: +SKIP
        {'cats/notes.txt': "unsupported file type '.txt': ..."}
    """
    checks = _inspect_all(paths, max_pixels)
    return {check.path: check.reason for check in checks if not check.ok}


def _inspect_all(paths: Sequence[str], max_pixels: int) -> list[ImageCheck]:
    # The strict-decoding switches are process-wide, so they wrap the whole pool.
    with _strict_decoding(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda path: _inspect(os.fspath(path), max_pixels), paths))


def diagnose(
    train_dir: str | os.PathLike,
    val_dir: str | os.PathLike | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DoctorReport:
    """Examine a training folder (and optionally its validation folder) file by file.

    Args:
        train_dir: str or path. Folder with one subfolder per class.
        val_dir: str or path, optional. Validation folder with the same classes.
        max_pixels: int. See :func:`inspect_image`.

    Returns:
        A :class:`DoctorReport`; ``print(report)`` shows it by path.

    Raises:
        DataError: a folder does not exist.

    Example:
        >>> report = diagnose("data/train", "data/val")  # doctest: +SKIP
        >>> report.ok, report.bad_files  # doctest: +SKIP
        (False, {'data/train/cats/7.jpg': 'truncated or corrupt (...)'})
    """
    train = scan_folder(train_dir)
    report = DoctorReport(root=train.root, hidden_ignored=list(train.hidden))
    train_hashes = _examine(train, report, report.class_counts, max_pixels)
    if val_dir is not None:
        val = scan_folder(val_dir)
        report.val_root = val.root
        report.hidden_ignored += val.hidden
        val_hashes = _examine(val, report, report.val_class_counts, max_pixels)
        report.duplicates = _duplicates(train_hashes, val_hashes)
        report.class_mismatch = _class_mismatch(train.class_files, val.class_files)
    report.imbalance_ratio = _imbalance(report.class_counts)
    report.warnings = _warnings(report, train)
    return report


def _examine(scan: FolderScan, report: DoctorReport, counts: dict, max_pixels: int) -> dict:
    """Inspect every file of ``scan`` into ``report``; return path -> sha256 of usable files."""
    hashes = {}
    for name, files in scan.class_files.items():
        checks = _inspect_all(files, max_pixels)
        for check in checks:
            if not check.ok:
                report.bad_files[check.path] = check.reason
            elif check.notes:
                report.notes[check.path] = check.notes
        usable = [check.path for check in checks if check.ok]
        counts[name] = len(usable)
        if not usable:
            report.empty_classes.append(os.path.join(scan.root, name))
        hashes.update((path, _sha256(path)) for path in usable)
    return hashes


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _duplicates(train_hashes: dict, val_hashes: dict) -> list[tuple[str, str]]:
    by_hash: dict[str, list[str]] = {}
    for path, digest in train_hashes.items():
        by_hash.setdefault(digest, []).append(path)
    return [
        (train_path, val_path)
        for val_path, digest in val_hashes.items()
        for train_path in by_hash.get(digest, [])
    ]


def _class_mismatch(train: dict, val: dict) -> dict[str, list[str]]:
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if not (missing or extra):
        return {}
    return {"missing_in_val": missing, "extra_in_val": extra}


def _imbalance(counts: dict[str, int]) -> float:
    nonzero = [count for count in counts.values() if count > 0]
    return max(nonzero) / min(nonzero) if nonzero else 1.0


def _warnings(report: DoctorReport, train: FolderScan) -> list[str]:
    found = []
    if report.imbalance_ratio > IMBALANCE_WARNING_RATIO:
        largest = max(report.class_counts, key=report.class_counts.get)
        nonempty = [name for name, count in report.class_counts.items() if count]
        smallest = min(nonempty, key=report.class_counts.get)
        found.append(
            f"strong class imbalance: {report.imbalance_ratio:.1f}x ({largest} "
            f"{report.class_counts[largest]} vs {smallest} {report.class_counts[smallest]}); "
            "consider class weights or collecting more of the small class"
        )
    if report.duplicates:
        found.append(
            f"{len(report.duplicates)} validation image(s) are exact copies of training "
            "images, which inflates validation accuracy; remove them from one split"
        )
    if train.loose_files:
        found.append(
            f"{len(train.loose_files)} file(s) directly in {train.root} belong to no class "
            "and are ignored; move them into a class folder"
        )
    if len(report.class_counts) == 1:
        found.append("only one class folder; a classifier needs at least two")
    return found


if __name__ == "__main__":
    from .cli import doctor_main

    raise SystemExit(doctor_main())

"""The dataset doctor: find every file that would break or silently skew training.

A class-per-folder image dataset fails in ways that surface late: a truncated JPEG
crashes epoch 3, a text file renamed ``.png`` stops the input pipeline, a CMYK or
16-bit image decodes to wrong colours, an EXIF-rotated phone photo trains sideways,
a ``.ipynb_checkpoints`` folder becomes a class. The doctor reads every file *before*
training, names each problem by path, and says what kerastl will do about it.

:func:`kerastl.data.images.find_bad_files` is the fast pre-flight
:func:`kerastl.data.folders.from_folder` runs; :func:`diagnose` is the full report, also
available from the shell::

    python -m kerastl.doctor data/train --val-data data/val
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ..core.console import hint
from .images import DEFAULT_MAX_PIXELS, FolderScan, inspect_all, scan_folder
from .tables import is_table, scan_table

IMBALANCE_WARNING_RATIO = 10.0


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
        """True when :func:`kerastl.load_splits` would accept the folders as they are."""
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
        # Fine conversions are counted by kind, not listed: 90 lines of "converted
        # (fine)" buried the problems above them (issue 27). --json lists every file.
        lines += _counted("Converted when loaded (fine)", self.notes.values())
        if self.hidden_ignored:
            lines.append(f"Ignored (hidden, not data): {len(self.hidden_ignored)} file(s)")
        if self.warnings:
            lines += [f"Warnings ({len(self.warnings)}):"] + [f"  - {w}" for w in self.warnings]
        lines.append(_verdict(self))
        return "\n".join(lines)


def _section(title: str, rows) -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    return [f"{title} ({len(rows)}):"] + [f"  {key}: {value}" for key, value in rows]


def _counted(title: str, notes_per_file) -> list[str]:
    """One line per kind of note with its file count, most common first."""
    from collections import Counter

    kinds = Counter(note for notes in notes_per_file for note in notes)
    if not kinds:
        return []
    return [f"{title}:"] + [f"  {count} file(s): {kind}" for kind, count in kinds.most_common()]


def _verdict(report: DoctorReport) -> str:
    if report.ok:
        return "OK: every class folder has usable images."
    if not report.class_counts:
        return f"NOT OK: no class subfolders in {report.root}; put images in one folder per class."
    problems = []
    if report.bad_files:
        problems.append(
            f"{len(report.bad_files)} bad file(s): fix or delete them, or load with "
            f"{hint('on_bad_file', 'skip')} to leave them out"
        )
    if report.empty_classes:
        problems.append("empty class folder(s): add images or delete the folder")
    if report.class_mismatch:
        problems.append("validation classes differ: use the same class subfolders in both")
    return "NOT OK: " + "; ".join(problems) + "."


def diagnose(
    train_dir: str | os.PathLike,
    val_dir: str | os.PathLike | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DoctorReport:
    """Examine a training folder (and optionally its validation folder) file by file.

    Args:
        train_dir: str or path. Folder with one subfolder per class, or a CSV of
            ``path,label`` rows (see :func:`kerastl.data.tables.from_csv`).
        val_dir: str or path, optional. Validation folder or CSV with the same classes.
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
    train, problems = _scan(train_dir)
    report = DoctorReport(root=train.root, hidden_ignored=list(train.hidden))
    report.bad_files.update(problems)
    train_hashes = _examine(train, report, report.class_counts, max_pixels)
    if val_dir is not None:
        val, problems = _scan(val_dir)
        report.bad_files.update(problems)
        report.val_root = val.root
        report.hidden_ignored += val.hidden
        val_hashes = _examine(val, report, report.val_class_counts, max_pixels)
        report.duplicates = _duplicates(train_hashes, val_hashes)
        report.class_mismatch = _class_mismatch(train.class_files, val.class_files)
    report.imbalance_ratio = _imbalance(report.class_counts)
    report.warnings = _warnings(report, train)
    return report


def _scan(path: str | os.PathLike) -> tuple[FolderScan, dict[str, str]]:
    """A folder's scan, or a ``path,label`` CSV's (with the rows it cannot use)."""
    return scan_table(path) if is_table(path) else (scan_folder(path), {})


def _examine(scan: FolderScan, report: DoctorReport, counts: dict, max_pixels: int) -> dict:
    """Inspect every file of ``scan`` into ``report``; return path -> sha256 of usable files."""
    # One pool for every class (not one per class folder): a thousand small classes
    # keep every core busy too.
    every_file = [file for files in scan.class_files.values() for file in files]
    checks = iter(inspect_all(every_file, max_pixels))
    usable_files = []
    for name, files in scan.class_files.items():
        class_checks = [next(checks) for _ in files]
        for check in class_checks:
            if not check.ok:
                report.bad_files[check.path] = check.reason
            elif check.notes:
                report.notes[check.path] = check.notes
        usable = [check.path for check in class_checks if check.ok]
        counts[name] = len(usable)
        if not usable:
            report.empty_classes.append(os.path.join(scan.root, name))
        usable_files += usable
    # hashlib releases the GIL on large buffers: the hashes run on every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(usable_files, pool.map(_sha256, usable_files), strict=True))


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

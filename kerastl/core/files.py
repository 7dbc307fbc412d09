"""Output files and directories: written atomically, never overwritten by surprise.

Every file kerastl writes goes through :func:`atomic_file` (or the text/JSON
helpers built on it): the content is written to a temporary name in the same
directory, flushed to disk, then renamed over the destination, so a crash, a kill
or Ctrl-C mid-write leaves the previous file intact and never a half-written one.
:func:`atomic_directory` does the same for a directory of files (checkpoints).

:func:`new_run_dir` gives each run without ``--output`` a fresh directory
(``runs/train``, ``runs/train2``, ...) and points ``runs/latest`` at it, so running
the same command twice never collides with the first run.

Example:
    >>> import tempfile, pathlib
    >>> p = atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hello")
    >>> p.read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError

RUNS_ROOT = Path("runs")
LATEST_LINK = "latest"


# ---------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, suffix: str = "", sync: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path``; on success it is synced and renamed to ``path``.

    For writers that need a file name (``model.save``, ``save_weights``,
    ``np.save``). On an exception the temporary file is removed and ``path`` is
    left as it was.

    Args:
        path: str or PathLike. Destination; its directory is created if missing.
        suffix: str. Ending the writer insists on (``".keras"``, ``".weights.h5"``).
            Defaults to the destination's own suffixes.
        sync: bool. Flush the file to disk before the rename (off for caches that
            can be rebuilt, where one fsync per small file would dominate).

    Yields:
        The temporary ``Path`` to write.

    Example:
        >>> import tempfile, pathlib
        >>> dest = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> with atomic_file(dest) as tmp:
        ...     _ = tmp.write_bytes(b"ok")
        >>> dest.read_bytes()
        b'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or "".join(path.suffixes)
    # Same directory as the destination, so os.replace is a rename within one
    # filesystem (atomic); a dot-name keeps it out of casual listings.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically through ``write(binary_file)``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        # os.open with 0o666 lets the umask decide the permissions, as a plain
        # open() would; tempfile.mkstemp would make every output owner-only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half.

    Example:
        >>> import tempfile, pathlib
        >>> atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "t.txt", "x").read_text()
        'x'
    """
    data = text.encode(encoding)
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically; NumPy values and paths are converted.

    Anything else JSON cannot encode raises ``TypeError`` before the destination is
    touched.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write_json(pathlib.Path(tempfile.mkdtemp()) / "m.json", {"acc": 0.5})
        >>> json.loads(p.read_text())
        {'acc': 0.5}
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for NumPy scalars/arrays and paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(
        f"Object of type {type(obj).__name__} is not JSON serializable; received {obj!r}. "
        "Convert it to a str, number, list or dict first."
    )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory next to ``path``, synced and renamed into place on success.

    An existing ``path`` is replaced only once the new directory is complete.

    Example:
        >>> import tempfile, pathlib
        >>> dest = pathlib.Path(tempfile.mkdtemp()) / "ckpt"
        >>> with atomic_directory(dest) as tmp:
        ...     _ = (tmp / "a").write_text("1")
        >>> sorted(p.name for p in dest.iterdir())
        ['a']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync(child)
        if path.exists():
            old = path.with_name(f".old-{path.name}-{secrets.token_hex(4)}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------- run dirs
def new_run_dir(kind: str = "train", root: str | os.PathLike = RUNS_ROOT) -> Path:
    """The first free ``root/kind``, ``root/kind2``, ``root/kind3``...

    Used when a run is given no ``--output``: running the same command twice makes
    a second directory instead of refusing or overwriting the first run.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> new_run_dir("train", root).name
        'train'
    """
    root = Path(root)
    for number in range(1, 100_000):
        candidate = root / (kind if number == 1 else f"{kind}{number}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)  # claim it, even against a race
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"No free run directory {kind}N under {str(root)!r}; pass --output.")


def mark_latest(run_dir: Path) -> None:
    """Point ``<parent>/latest`` at ``run_dir`` (best effort: a plain directory stays)."""
    link = run_dir.parent / LATEST_LINK
    try:
        if link.is_symlink() or not link.exists():
            tmp = link.with_name(f".{LATEST_LINK}.{secrets.token_hex(4)}")
            tmp.symlink_to(run_dir.name, target_is_directory=True)
            os.replace(tmp, link)
    except OSError:  # file systems without symlinks: the numbered directory is enough
        pass


def inside_output(out: Path, relative: str | os.PathLike) -> Path:
    """``out / relative``, refused if ``..`` or a symlink would lead outside ``out``.

    Raises:
        ConfigError: the path escapes the output directory.

    Example:
        >>> inside_output(Path("runs/a"), "checkpoints").name
        'checkpoints'
    """
    root = Path(out).resolve()
    candidate = (Path(out) / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise ConfigError(
            f"Output path {str(relative)!r} resolves to {str(candidate)!r}, outside the output "
            f"directory {str(root)!r} ('..' or a symlink); use a path inside it."
        )
    return candidate


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib ``Figure`` as a PNG, atomically, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to fig; no pyplot, no global backend change
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))

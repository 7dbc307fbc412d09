"""What a run prints: progress bars for people, plain lines for logs.

Keras's ``Progbar`` writes carriage returns, backspaces and ANSI colours whenever it
thinks it may: a training log redirected to a file filled up with them (1,864 escapes
in one run, issue 27). kerastl shows a bar only where a person watches it live (a
terminal or a notebook) and prints one plain line per epoch everywhere else.

Example:
    >>> from kerastl.core.console import progress
    >>> [x for x in progress(range(3), total=3, label="demo", show=False)]
    [0, 1, 2]
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """Whether stdout is watched live: a terminal, or a Jupyter/Colab notebook.

    ``KERASTL_PROGRESS=0`` or ``1`` forces the answer (e.g. in CI logs).

    Example:
        >>> isinstance(interactive(), bool)
        True
    """
    forced = os.environ.get("KERASTL_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    # A Jupyter or Colab kernel, not a process that merely imported ipykernel (a test
    # runner executing notebooks does, and its own output is not watched live).
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if hasattr(ipython, "get_ipython") else None
    if getattr(shell, "kernel", None) is not None:
        return True
    stream = sys.stdout
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def progress_bar(total: int | None, label: str | None = None, *,
                 show: bool | None = None) -> Any:
    """A Keras ``Progbar`` when the output is :func:`interactive`, else None.

    Args:
        total: int, optional. Steps in the pass (None or negative: unknown).
        label: str, optional. Printed above the bar.
        show: bool, optional. Force showing (True) or hiding (False) it.

    Returns:
        ``keras.utils.Progbar`` or None (nothing to draw).
    """
    if show is None:
        show = interactive() and _PROGRESS["shown"]
    if not show:
        return None
    import keras

    if label:
        print(label, flush=True)
    return keras.utils.Progbar(total if total is not None and total >= 0 else None,
                               verbose=1)


def progress(items: Iterable[T], *, total: int | None, label: str,
             show: bool | None = None) -> Iterator[T]:
    """Iterate ``items``, drawing a bar of ``total`` steps when :func:`interactive`.

    Used for every long pass over a folder (feature extraction, evaluation, the
    pixel blend's read), which printed nothing before.

    Args:
        items: iterable. Yielded unchanged.
        total: int, optional. How many items (unknown: None or negative).
        label: str. What the pass is, e.g. ``"Feature extraction"``.
        show: bool, optional. Force the bar on or off.
    """
    bar = progress_bar(total, label, show=show)
    count = 0
    for item in items:
        yield item
        count += 1
        if bar is not None:
            bar.update(count)
    if bar is not None and (total is None or total < 0 or count != total):
        bar.update(count, finalize=True)


def batches_in(dataset: Any) -> int | None:
    """The number of batches of a ``tf.data.Dataset``, or None when TF cannot tell."""
    try:
        count = int(dataset.cardinality())
    except (AttributeError, TypeError, ValueError):
        return None
    return count if count >= 0 else None


def epoch_line(phase: str, phase_epoch: int, phase_epochs: int,
               logs: dict[str, float]) -> str:
    """One plain line for an epoch: what a redirected log gets instead of a bar.

    Epochs are counted within their phase, as the plan states them (a probe is
    not an epoch of the phase after it).

    Example:
        >>> epoch_line("full", 3, 19, {"loss": 1.2, "accuracy": 0.5, "lr": 1e-3,
        ...                            "seconds": 2.04})
        'Epoch 3/19 (full): loss 1.2000 - accuracy 0.5000 - lr 0.001 - 2.0 s'
    """
    parts = [f"{key} {value:.4f}" for key, value in logs.items()
             if key not in ("lr", "seconds") and isinstance(value, (int, float))]
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    if "seconds" in logs:
        parts.append(f"{logs['seconds']:.1f} s")
    return f"Epoch {phase_epoch}/{phase_epochs} ({phase}): " + " - ".join(parts)


_PROGRESS = {"shown": True}


@contextlib.contextmanager
def progress_shown(shown: bool) -> Iterator[None]:
    """Within it, bars are drawn only if ``shown`` (a run with ``verbose=0`` draws none).

    Example:
        >>> with progress_shown(False):
        ...     progress_bar(3, show=None) is None
        True
    """
    before = _PROGRESS["shown"]
    _PROGRESS["shown"] = shown
    try:
        yield
    finally:
        _PROGRESS["shown"] = before


# Who reads the hints: "python" (arguments) unless a command line set "cli" (flags).
_AUDIENCE = {"value": "python"}


@contextlib.contextmanager
def speaking_to_cli() -> Iterator[None]:
    """Within it, :func:`hint` names flags: every command runs inside one.

    Example:
        >>> with speaking_to_cli():
        ...     print(hint("on_bad_file", "skip"))
        --on-bad-file skip
        >>> hint("on_bad_file", "skip")
        "on_bad_file='skip'"
    """
    before = _AUDIENCE["value"]
    _AUDIENCE["value"] = "cli"
    try:
        yield
    finally:
        _AUDIENCE["value"] = before


def hint(name: str, value: object) -> str:
    """An option as the caller writes it: ``--lr auto`` on the CLI, ``lr='auto'`` in Python.

    Example:
        >>> hint("bn_policy", "train")
        "bn_policy='train'"
    """
    placeholder = isinstance(value, str) and value.isupper()  # N, DIR: not a literal
    if _AUDIENCE["value"] == "cli":
        return f"{_flag(name)} {_cli_value(value)}"
    return f"{name}={value}" if placeholder else f"{name}={value!r}"


def cli_language(text: str, fields: dict[str, str]) -> str:
    """Rewrite Python-style hints (``on_bad_file='skip'``) of known options as flags.

    Library errors name arguments, as a Python caller writes them; the command line
    shows the same message with flags (issue 27: "pass on_bad_file='skip'" on the
    CLI). Calls such as ``kerastl.build_model(..., bn_policy='train')`` are left as
    they are: they name Python code.

    Args:
        text: str. The message.
        fields: dict. Option name -> its flag (``{"on_bad_file": "--on-bad-file"}``).

    Example:
        >>> cli_language("pass on_bad_file='skip' or weights=None",
        ...              {"on_bad_file": "--on-bad-file", "weights": "--weights"})
        'pass --on-bad-file skip or --weights none'
    """
    import re

    names = "|".join(sorted(map(re.escape, fields), key=len, reverse=True))
    if not names:
        return text
    pattern = re.compile(rf"(?<![\w.(,-])({names})=('[^']*'|\"[^\"]*\"|[\w.+-]+)")

    def flag(match: re.Match) -> str:
        start = match.start()
        if text.rfind("(", 0, start) > text.rfind(")", 0, start):
            return match.group(0)  # inside a call: Python code, kept
        return f"{fields[match.group(1)]} {_cli_value(match.group(2))}"

    return pattern.sub(flag, text)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_value(value: object) -> str:
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return "none" if text == "None" else text


LINE_WIDTH = 100


def wrapped(text: str, indent: str = "  ") -> str:
    """``text`` folded at :data:`LINE_WIDTH` columns, continuation lines indented.

    Example:
        >>> print(wrapped("Plan: " + "word " * 30))  # doctest: +NORMALIZE_WHITESPACE
        Plan: word word word word word word word word word word word word word word word word
          word word word word word word word word word word word word word word
    """
    import textwrap

    return textwrap.fill(text, width=LINE_WIDTH, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def epoch_in_phase(history: list[dict], epoch: int | None) -> str | None:
    """A run-wide epoch number as the console counted it: ``"full 6/19"``.

    ``history.csv`` numbers epochs over the whole run (a probe is epoch 1); the
    console counts them within their phase, as the plan states them.

    Example:
        >>> rows = [{"epoch": 1, "phase": "probe"}] + [
        ...     {"epoch": e, "phase": "full"} for e in range(2, 21)]
        >>> epoch_in_phase(rows, 7), epoch_in_phase(rows, 1)
        ('full epoch 6/19', 'the probe')
    """
    if epoch is None:
        return None
    rows = [row for row in history if row["epoch"] <= epoch]
    if not rows:
        return f"epoch {epoch}"
    phase = rows[-1]["phase"]
    total = sum(1 for row in history if row["phase"] == phase)
    if total == 1 and phase == "probe":
        return "the probe"
    within = sum(1 for row in rows if row["phase"] == phase)
    return f"{phase} epoch {within}/{total}"

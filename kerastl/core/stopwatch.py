"""Wall time of each stage of a run, for ``run.json``'s breakdown.

Example:
    >>> clock = Stopwatch()
    >>> clock.lap("setup")
    >>> list(clock.laps)
    ['setup']
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class Stopwatch:
    """Wall time of each stage of a run, for ``run.json``'s breakdown.

    ``before_fit`` is what happened before :func:`fit` was called
    (importing TensorFlow, parsing flags), read from ``/proc`` on Linux.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.before_fit = _seconds_since_process_start()
        self.laps: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}
        self._last = self.started

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.started

    def split(self, lap: str, parts: dict[str, float]) -> None:
        """Record what lap ``lap`` was made of; the unnamed rest is ``other``."""
        parts = {name: round(seconds, 3) for name, seconds in parts.items()}
        parts["other"] = round(self.laps[lap] - sum(parts.values()), 3)
        self.parts[lap] = parts

    def breakdown(self) -> dict[str, float | None]:
        return {"before_fit": None if self.before_fit is None else round(self.before_fit, 3),
                **self.laps, "fit_total": round(self.total(), 3)}


def _seconds_since_process_start() -> float | None:
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None

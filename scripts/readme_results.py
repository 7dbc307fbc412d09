"""Figures for the README, read from ``benchmarks/results/*.json`` (never typed by hand).

Shared by :mod:`make_docs` and :mod:`readme_issue26`.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def figure(value) -> str:
    """A number from a results file, cut (never rounded up) to 4 significant digits.

    Example:
        >>> figure(5.98), figure(0.99999), figure(3.4602495), figure(12), figure(True)
        ('5.98', '0.9999', '3.460', '12', 'yes')
    """
    from decimal import ROUND_DOWN, Decimal

    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return str(value)
    exact = Decimal(repr(value))
    if exact == 0:
        return "0"
    step = Decimal(1).scaleb(exact.adjusted() - 3)
    cut = exact.quantize(step, rounding=ROUND_DOWN)
    return f"{cut:f}" if len(repr(value)) > len(f"{cut:f}") else repr(value)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def goal_text(goal: dict) -> str:
    return "met" if goal.get("met") else "**not met**"


def seed_runs(result: dict, name: str) -> list[dict]:
    """The runs of candidate ``name`` and of its ``name_s<k>`` seeds."""
    return [run for key, run in result["candidates"].items()
            if key == name or key.startswith(f"{name}_s")]


def seed_means(result: dict, name: str) -> float | None:
    """Mean test accuracy of candidate ``name`` and its ``name_s<k>`` seeds."""
    scores = [run.get("test_accuracy") for run in seed_runs(result, name)]
    scores = [score for score in scores if score is not None]
    return round(sum(scores) / len(scores), 4) if scores else None


def default_test_means() -> dict[str, float]:
    """The previous default command's (the last-layer probe, fine-tuned, blended) test
    accuracy per suite task, mean of its seeds: the blend-weight study's chosen weight,
    and the tasks with a split of their own."""
    means: dict[str, float] = {}
    blend = load("blend_weight")
    if blend and blend.get("final"):
        means.update(blend["test"][str(blend["chosen_on_val"])]["accuracy"])
    split = load("transfer_suite_split_seeds")
    for task, result in (split or {}).get("tasks", {}).items():
        mean = seed_means(result, "default")
        if mean is not None:
            means[task] = mean
    return means

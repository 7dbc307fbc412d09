"""The README's main job (``python -m kerastl.train`` on data_samples/), timed by head.

The first command a user runs trains the shipped source backbone on
``data_samples/fashion``. Since issue 26, ``--mode auto`` fine-tunes from the
multi-depth probe; ``--head avg`` is the last-layer recipe it replaced. This times both
as the user types them, each its own process (TensorFlow's import included), alternated
``--repeats`` times so the machine's drift falls on both sides alike, and records where
the time went (``run.json``'s ``seconds_breakdown`` and ``train_breakdown``) and the
test accuracy each scored.

The test split is scored once per run, as the command does; nothing here chooses a
default. Writes ``benchmarks/results/main_job.json``: per-run facts, each side's mean,
and the wall-time ratio default / ``--head avg`` over the same runs.

Usage:
    python benchmarks/main_job.py
    python benchmarks/main_job.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, run_process, write_results  # noqa: E402

SIDES = {"default": [], "head_avg": ["--head", "avg"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side")
    args = parser.parse_args()
    load_before = load_average()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for side, flags in SIDES.items():
                out = Path(tmp) / f"{side}_{repeat}"
                timing = run_process([sys.executable, "-m", "kerastl.train",
                                      "--output", str(out), *flags])
                runs[side].append(_facts(out, timing["wall_seconds"]))
                print(f"{side:>8} #{repeat}: {timing['wall_seconds']:.1f} s, test accuracy "
                      f"{runs[side][-1]['test_accuracy']:.4f}", flush=True)
    summary = {side: _mean(side_runs) for side, side_runs in runs.items()}
    ratio = round(summary["default"]["wall_seconds"] / summary["head_avg"]["wall_seconds"], 3)
    print(json.dumps({"wall_ratio_default_over_head_avg": ratio, **summary}))
    write_results("main_job", {"sides": {s: SIDES[s] for s in SIDES},
                               "repeats": args.repeats, "runs": runs, "mean": summary,
                               "wall_ratio_default_over_head_avg": ratio},
                  load_before=load_before,
                  notes=["sides alternate run by run; the ratio is of the sides' mean "
                         "wall time, whole processes, measured in this one invocation",
                         "test accuracy is each run's own score of the test split; it "
                         "selects nothing"])


def _facts(out: Path, wall_seconds: float) -> dict:
    facts = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_seconds": wall_seconds, "run_seconds": facts["seconds"],
            "seconds_breakdown": facts["seconds_breakdown"],
            "train_breakdown": facts["train_breakdown"], "epochs": facts["epochs"],
            "test_accuracy": round(metrics["accuracy"], 4)}


def _mean(side_runs: list[dict]) -> dict:
    keys = ("wall_seconds", "run_seconds", "test_accuracy")
    mean = {key: round(statistics.fmean(run[key] for run in side_runs), 4) for key in keys}
    mean["train_seconds"] = round(statistics.fmean(
        run["seconds_breakdown"]["train"] for run in side_runs), 3)
    return mean


if __name__ == "__main__":
    main()

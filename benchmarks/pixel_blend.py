"""The pixel blend's C and weight, on the transfer suite's validation images (issue 10).

``kerastl.recipes.pixel_blend`` adds a logistic regression on the pooled input pixels to a trained
network's logits. Its defaults for runs without validation data (``PIXEL_C``,
``PIXEL_WEIGHT``) were chosen here: for each suite task, the network of a finished
run *without* the blend (the suite candidate ``--pixel-blend off``), a pixel model per
``C`` fitted on the task's ``train`` folder exactly as a run fits it
(:func:`kerastl.recipes.pixel_blend.fit_pixel_model`), and the accuracy of every ``C`` x
weight point
on the task's ``val`` folder (never ``test``). It prints, for each point, the worst and
mean margin over pixels (the suite's baseline) on the tasks whose runs have no
validation split of their own (k < 50 per class), and writes
``benchmarks/results/pixel_blend.json``.

Run from the repository root, after the suite has the networks::

    python benchmarks/transfer_suite.py --candidate "noblend=--pixel-blend off"
    python benchmarks/pixel_blend.py                      # every task's noblend run
    python benchmarks/pixel_blend.py --run T1=default-27c5...   # a given run directory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_suite import DEFAULT_ROOT, machine_facts  # noqa: E402

import kerastl  # noqa: E402
from kerastl.models.forward import predict
from kerastl.outputs.inference import load_run_labels  # noqa: E402
from kerastl.recipes import pixel_blend as blend  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pixel_blend.json"
C_VALUES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0)
MIN_PER_CLASS_WITH_VAL_SPLIT = 50  # --val-split auto: 20 % must leave 10 per class


def task_scores(task_dir: Path, run_dir: Path) -> dict:
    """Validation accuracy of every C x weight blend of one finished network."""
    names = load_run_labels(run_dir / "model.keras")["class_names"]
    model = kerastl.load_model(run_dir / "model.keras", compile=False)
    size = int(model.input_shape[1])
    train = kerastl.from_folder(task_dir / "train", class_names=names)
    val = kerastl.from_folder(task_dir / "val", class_names=names)
    logits, labels = predict(blend._logits_model(model), val.batches(size, 64))
    scores = {}
    for c in C_VALUES:
        pixels = blend.fit_pixel_model(model, train, image_size=size, task="multiclass", C=c)
        _, by_weight = blend.choose_weight("multiclass", logits,
                                           pixels.logits(val.batches(size, 64)), labels,
                                           weights=WEIGHTS)
        scores[str(c)] = {str(w): v for w, v in by_weight.items()}
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    parser.add_argument("--candidate", default="noblend", help="suite candidate of the runs")
    parser.add_argument("--run", action="append", default=[], metavar="TASK=DIR",
                        help="a task's run directory name instead of the candidate's")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    root, chosen = Path(args.root), dict(item.split("=", 1) for item in args.run)
    suite = json.loads((Path(__file__).resolve().parent / "results" /
                        "transfer_suite.json").read_text())
    tasks = {}
    for task_dir in sorted((root / "tasks").iterdir()):
        task = task_dir.name.split("-")[0]
        runs = sorted((root / "runs" / task_dir.name).glob(f"{args.candidate}-*"))
        run_dir = root / "runs" / task_dir.name / chosen[task] if task in chosen else (
            runs[0] if runs else None)
        if run_dir is None or not (run_dir / "model.keras").is_file():
            print(f"{task}: no finished {args.candidate} run; skipped", flush=True)
            continue
        definition = suite["tasks"][task]["definition"]
        tasks[task] = {"run": run_dir.name, "per_class": definition["per_class"],
                       "pixels_val_accuracy": suite["tasks"][task]["pixels"]["val_accuracy"],
                       "val_accuracy": task_scores(task_dir, run_dir)}
        print(f"{task}: {run_dir.name} done", flush=True)
    no_split = [t for t, r in tasks.items() if r["per_class"] < MIN_PER_CLASS_WITH_VAL_SPLIT]
    table = []
    for c in map(str, C_VALUES):
        for w in map(str, WEIGHTS):
            margins = {t: round(tasks[t]["val_accuracy"][c][w] - tasks[t]["pixels_val_accuracy"],
                                4) for t in no_split}
            table.append({"C": float(c), "weight": float(w), "margins": margins,
                          "worst": min(margins.values()), "mean": round(float(np.mean(
                              list(margins.values()))), 4),
                          "beats_pixels": sum(m > 0 for m in margins.values())})
    for row in sorted(table, key=lambda r: (-r["worst"], -r["mean"]))[:12]:
        print(f"C {row['C']:<5g} weight {row['weight']:<4g} worst {row['worst']:+.3f} "
              f"mean {row['mean']:+.4f} beats pixels on {row['beats_pixels']}/{len(no_split)}")
    Path(args.out).write_text(json.dumps({
        "benchmark": "benchmarks/pixel_blend.py (issue 10)", "machine": machine_facts(),
        "defaults": {"C": blend.PIXEL_C, "weight": blend.PIXEL_WEIGHT},
        "scored_on": "val (each task's val folder; test never read)",
        "tasks_without_val_split": no_split, "tasks": tasks, "grid": table,
    }, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

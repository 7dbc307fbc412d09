"""Frozen VGG16 through the CLI with its defaults vs the plain Keras script (issue 11).

The seed documents' job: frozen VGG16 (``weights=None``), 2,000 Fashion-MNIST training
images at 32x32 in class folders (200 per class), 10 epochs, batch 32. Three kinds of
process, each its own Python with its own precision policy:

* ``kerastl``: ``python -m kerastl.train --data DIR --backbone VGG16 --weights none
  --mode frozen --image-size 32 --epochs 10 --batch-size 32 --output RUN`` and nothing
  else: the CLI's defaults (``--precision auto``, ``--val-split auto``, which holds out
  20 % here, the feature cache, every output file). Its ``run.json`` gives the
  in-process breakdown (import, build, train, evaluate, save);
* ``keras``: ``benchmarks/seed_keras_frozen.py DIR`` (the textbook script: frozen
  base inside the model, ``model.fit`` on images every epoch, Keras's float32);
* ``forward``: one forward pass of kerastl's VGG16 base over the same 2,000 images,
  in kerastl's precision, after a warm-up: the least work any frozen-base training
  must do.

Rounds alternate which side runs first (neighbours on a shared machine hurt both
alike). Goals: the whole ``kerastl`` process >= 6x faster than the ``keras`` process,
and kerastl's in-process training time (run.json ``train``: feature extraction plus
the head's epochs) <= 1.2x the forward pass; run.json's ``train_breakdown`` says
where that time goes (extraction, each phase's first epoch, the rest). Writes
``benchmarks/results/frozen_cache.json``.

Example:
    python benchmarks/frozen_cache.py
    python benchmarks/frozen_cache.py --per-class 50 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, python_command, run_process, write_results  # noqa: E402

TARGET_SPEEDUP = 6.0
TARGET_TRAIN_OVER_FORWARD = 1.2
SIZE = 32
FORWARD_PASSES = 5  # timed passes of the forward reference; the fastest is used
SEED_SCRIPT = Path(__file__).resolve().parent / "seed_keras_frozen.py"


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200, help="training images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child-forward", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_folder(root: Path, per_class: int) -> Path:
    """The first ``per_class`` official training images of each class, 32x32 RGB PNG."""
    import numpy as np
    from PIL import Image

    from kerastl.data.datasets import fashion_mnist

    (x, y), _, names = fashion_mnist()
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(y == label)[:per_class]:
            padded = np.pad(x[i], 2)  # 28x28 -> 32x32, pixels unchanged
            Image.fromarray(np.repeat(padded[..., None], 3, axis=-1)).save(folder / f"{i}.png")
    return root


def forward_child(data: str) -> dict:
    """One timed forward pass of kerastl's frozen VGG16 over every image in ``data``."""
    import kerastl
    from kerastl.models.build import feature_extractor
    from kerastl.models.features import run_extractor
    from kerastl.training.runtime import setup_runtime

    runtime = setup_runtime("auto", "auto", batch_size=32, backbone="VGG16")
    images = kerastl.from_folder(data)
    model = kerastl.build_model("VGG16", len(images.class_names), input_shape=SIZE,
                                weights=None)
    extractor = feature_extractor(model)
    run_extractor(extractor, images)  # tracing, oneDNN kernel selection, file cache
    # The best of several passes: on this VM the same pass takes either ~2.8 s or
    # ~5.1 s (bimodal, seen in every process), and a slow reference pass would flatter
    # the ratio; the fastest pass is the strictest denominator.
    passes = []
    for _ in range(FORWARD_PASSES):
        started = time.perf_counter()
        run_extractor(extractor, images)
        passes.append(round(time.perf_counter() - started, 3))
    return {"forward_seconds": min(passes), "passes": passes, "images": len(images),
            "precision": runtime.precision}


def kerastl_side(data: Path, run: Path, args) -> dict:
    command = [sys.executable, "-m", "kerastl.train", "--data", str(data), "--backbone",
               "VGG16", "--weights", "none", "--mode", "frozen", "--image-size", str(SIZE),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch),
               "--output", str(run), "--verbose", "0"]
    result = run_process(command)
    report = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return {"process_seconds": round(result["wall_seconds"], 3),
            "cpu_seconds": round(result["cpu_seconds"], 3),
            "breakdown": report["seconds_breakdown"],
            "train_breakdown": report["train_breakdown"], "notes": report["notes"],
            "runtime": report["runtime"], "accuracy": metrics.get("accuracy"),
            "cache_used": any("cached base features" in n for n in report["notes"])}


def keras_side(data: Path, args) -> dict:
    result = run_process([sys.executable, str(SEED_SCRIPT), str(data), "--epochs",
                          str(args.epochs), "--batch-size", str(args.batch)])
    return {"process_seconds": round(result["wall_seconds"], 3),
            "cpu_seconds": round(result["cpu_seconds"], 3), **result["printed"]}


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.child_forward:
        print(json.dumps(forward_child(args.child_forward)))
        return 0
    load_before = load_average()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="kerastl-frozen-") as tmp:
        data = write_folder(Path(tmp) / "train", args.per_class)
        for r in range(args.rounds):
            row = {}
            order = ("kerastl", "keras") if r % 2 == 0 else ("keras", "kerastl")
            for side in order:
                row[side] = (kerastl_side(data, Path(tmp) / f"run{r}", args)
                             if side == "kerastl" else keras_side(data, args))
                print(side, json.dumps({k: v for k, v in row[side].items()
                                        if k in ("process_seconds", "accuracy",
                                                 "val_accuracy")}), flush=True)
            row["forward"] = run_process(python_command(
                __file__, "--child-forward", str(data)))["printed"]
            print("forward", json.dumps(row["forward"]), flush=True)
            rounds.append(row)
    speedups = [r["keras"]["process_seconds"] / r["kerastl"]["process_seconds"] for r in rounds]
    over_forward = [r["kerastl"]["breakdown"]["train"] / r["forward"]["forward_seconds"]
                    for r in rounds]
    summary = {
        "speedup_whole_process": [round(s, 3) for s in speedups],
        "speedup_median": round(statistics.median(speedups), 3),
        "train_over_forward": [round(o, 3) for o in over_forward],
        "train_over_forward_median": round(statistics.median(over_forward), 3),
        "cache_used": all(r["kerastl"]["cache_used"] for r in rounds),
        # Where train's time goes, over the forward reference: phase_data is the cold
        # extraction pass (first-call tracing and kernel selection included).
        "train_parts_over_forward_median": {
            part: round(statistics.median(r["kerastl"]["train_breakdown"][part]
                                          / r["forward"]["forward_seconds"] for r in rounds), 3)
            for part in rounds[0]["kerastl"]["train_breakdown"]},
    }
    goals = {
        "speedup_whole_process": {"goal": TARGET_SPEEDUP, "value": summary["speedup_median"],
                                  "met": summary["speedup_median"] >= TARGET_SPEEDUP},
        "train_over_forward": {"goal": TARGET_TRAIN_OVER_FORWARD,
                               "value": summary["train_over_forward_median"],
                               "met": summary["train_over_forward_median"]
                               <= TARGET_TRAIN_OVER_FORWARD},
    }
    print(json.dumps({"summary": summary, "goals": goals}))
    write_results("frozen_cache", {
        "setup": {"backbone": "VGG16", "weights": None, "image_size": SIZE,
                  "images": 10 * args.per_class, "epochs": args.epochs,
                  "batch_size": args.batch, "rounds": args.rounds,
                  "dataset": "Fashion-MNIST training images padded to 32x32 RGB"},
        "summary": summary, "goals": goals, "rounds": rounds,
    }, load_before=load_before, output=args.output)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())

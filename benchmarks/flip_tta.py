"""Flip test-time augmentation: does averaging a network's logits over the image and its
mirror image help the suite's networks (issue 26: a better network on weak sources)?

Reads the networks the transfer suite already trained without the blend (the
``network``, ``network_s1``, ``network_s2`` candidates of
``benchmarks/results/transfer_suite_split_seeds.json``: the two tasks with 100 images
per class, T4 and T10, seeds 0-2) and scores each on the task's ``val`` images only:
the network, the network averaged with its logits on the mirror images, and both
blended with the pixel model at weights 1, 2 and 3. ``flip`` is the
``--augment auto`` mirror check's decision on the task's training images: TTA by
mirror images is only a candidate where training flips too.

Usage::

    python benchmarks/flip_tta.py --root <suite root>

Writes ``benchmarks/results/flip_tta.json``. Nothing here reads test images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import RESULTS, load_average, write_results

import kerastl
from kerastl.data.mirror import mirror_check
from kerastl.models.forward import predict
from kerastl.recipes import pixel_blend as blend

CANDIDATES = ("network", "network_s1", "network_s2")
WEIGHTS = (1.0, 2.0, 3.0)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float(np.mean(logits.argmax(1) == labels)), 4)


def score_run(run_dir: Path, task_dir: Path) -> dict:
    """Val accuracy of one saved network with and without flip TTA, alone and blended."""
    import tensorflow as tf

    train = kerastl.from_folder(task_dir / "train")
    val = kerastl.from_folder(task_dir / "val", class_names=train.class_names)
    model = kerastl.load_model(run_dir / "model.keras", compile=False)
    size = int(model.input_shape[1])
    logits_model = blend._logits_model(model)
    logits, labels = predict(logits_model, val.batches(size, 64))
    mirrored = val.batches(size, 64).map(lambda x, y: (tf.reverse(x, axis=[2]), y))
    flipped, _ = predict(logits_model, mirrored)
    pixels = blend.fit_pixel_model(model, train, image_size=size, task="multiclass")
    pixel_logits, labels = pixels.logits(val.batches(size, 64)), labels.reshape(-1)
    tta = (logits + flipped) / 2
    row = {"flip": mirror_check(train).flip, "network": _accuracy(logits, labels),
           "network_tta": _accuracy(tta, labels)}
    for weight in WEIGHTS:
        row[f"blend_{weight}"] = _accuracy(logits + weight * pixel_logits, labels)
        row[f"blend_{weight}_tta"] = _accuracy(tta + weight * pixel_logits, labels)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the transfer suite's root")
    args = parser.parse_args()
    load_before = load_average()
    suite = json.loads((RESULTS / "transfer_suite_split_seeds.json").read_text())
    tasks, means = {}, {}
    for task_id, task in suite["tasks"].items():
        task_dir = args.root / "tasks" / task["definition"]["name"]
        rows = {}
        for name in CANDIDATES:
            run_dir = Path(task["candidates"][name]["run_dir"].replace("<root>",
                                                                        str(args.root)))
            rows[name] = score_run(run_dir, task_dir)
            print(task_id, name, json.dumps(rows[name]), flush=True)
        tasks[task_id] = rows
        keys = [k for k in next(iter(rows.values())) if k != "flip"]
        means[task_id] = {k: round(float(np.mean([r[k] for r in rows.values()])), 4)
                          for k in keys}
        print(task_id, "mean", json.dumps(means[task_id]))
    write_results("flip_tta", {"split": "val", "seeds": [0, 1, 2],
                               "networks_from": "transfer_suite_split_seeds.json",
                               "mean_over_seeds": means, "runs": tasks},
                  load_before=load_before)


if __name__ == "__main__":
    main()

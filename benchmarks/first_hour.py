"""The first hour's folder (issue 27): ``--weights none`` with every default, measured.

A new user with nothing to download: 4 classes x 30 handwritten digits at 32 px
(scikit-learn's ``load_digits``, upscaled), a test folder of 30 more per class. Each
side is the command a user types, as its own process:

* ``default``: ``python -m kerastl.train --data train --test-data test --weights none``;
* ``scratch_32``: the scratch regime at the images' own size with the same epoch
  budget, ``--mode scratch --image-size 32`` (the goal's comparison);
* ``scratch_15``: the issue's comparison, ``--mode scratch --epochs 15`` (at the
  backbone's default size, 224 px, as that command runs);
* ``old_auto``: the recipe ``auto`` ran before the fix, spelled out (``--mode full
  --head-warmup probe --pixel-blend on``) at 32 px: the network never learns and the
  run must say so.

Nothing here chooses a default: the test folder only checks that the network of the
default run learns (goal: its own accuracy >= the scratch regime's) and that a dead one
is named. Writes ``benchmarks/results/first_hour.json``.

Usage:
    python benchmarks/first_hour.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, run_process, write_results  # noqa: E402

SIDES = {
    "default": [],
    "scratch_32": ["--mode", "scratch", "--image-size", "32"],
    "scratch_15": ["--mode", "scratch", "--epochs", "15"],
    "old_auto": ["--mode", "full", "--head-warmup", "probe", "--pixel-blend", "on",
                 "--image-size", "32"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default=",".join(SIDES), help="comma list of sides")
    args = parser.parse_args()
    from kerastl.data.datasets import digits_folder

    load_before = load_average()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, test = digits_folder(root, split="train"), digits_folder(root, split="test")
        for side in args.sides.split(","):
            out = root / side
            timing = run_process([sys.executable, "-m", "kerastl.train", "--data", str(train),
                                  "--test-data", str(test), "--weights", "none",
                                  "--output", str(out), *SIDES[side]], cwd=root)
            facts = json.loads((out / "run.json").read_text())
            metrics = json.loads((out / "metrics.json").read_text())
            check = facts["network_check"]
            runs[side] = {"flags": SIDES[side], "wall_seconds": timing["wall_seconds"],
                          "image_size": _image_size(out),
                          "phases": [p["name"] for p in _phases(out)],
                          "accuracy": round(metrics["accuracy"], 4),
                          "network_accuracy": check["network_accuracy"],
                          "network_status": check["status"], "warning": check["message"]}
            print(f"{side:>11}: accuracy {runs[side]['accuracy']:.4f}, network alone "
                  f"{check['network_accuracy']:.4f} ({check['status']}), "
                  f"{timing['wall_seconds']:.1f} s")
    goals = {}
    for other in ("scratch_32", "scratch_15"):
        if {"default", other} <= set(runs):
            goals[f"default_network_at_least_{other}"] = (
                runs["default"]["network_accuracy"] >= runs[other]["network_accuracy"])
    if "old_auto" in runs:
        goals["old_auto_named_at_chance"] = runs["old_auto"]["network_status"] == "at_chance"
    print(json.dumps(goals))
    write_results("first_hour", {"runs": runs, "goals": goals}, load_before=load_before,
                  notes=["test folder scored once per side; it selects nothing"])


def _phases(out: Path) -> list[dict]:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["phases"]


def _image_size(out: Path) -> int:
    import yaml

    return int(yaml.safe_load((out / "config.yaml").read_text())["image_size"])


if __name__ == "__main__":
    main()

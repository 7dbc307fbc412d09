"""Training speed under float32 vs the precision kerastl picks for this machine.

Each (model, precision) pair runs in its own subprocess because the Keras dtype
policy is global. Every run trains on the same seeded data with the same batch,
warms up (tracing, oneDNN kernel selection), then times plain ``model.fit`` for a
fixed number of steps. Prints the speed-up and writes
``benchmarks/results/precision.json``.

Example:
    python benchmarks/precision.py                  # ResNet50 and VGG16
    python benchmarks/precision.py --models ResNet50 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).parent / "results" / "precision.json"
TARGET_SPEEDUP = 1.35
NUM_CLASSES = 10
INPUT_SIZE = 32


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50", "VGG16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows; best is kept")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--output", type=Path, default=RESULTS)
    # Internal: run one measurement and print it as JSON.
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(
    model_name: str, precision: str, batch: int, steps: int, warmup: int, repeats: int
) -> dict:
    """Train ``model_name`` under ``precision`` and return steps per second.

    Runs in the calling process, so call it in a fresh interpreter per precision.
    The best of ``repeats`` windows is reported (as ``timeit`` does): on a shared
    machine, slower windows measure the neighbours, not the precision.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import kerastl
    from kerastl.training.runtime import setup_runtime

    runtime = setup_runtime("default", precision, batch_size=batch)
    keras.utils.set_random_seed(0)
    model = kerastl.build_model(
        model_name, NUM_CLASSES, input_shape=INPUT_SIZE, weights=None, head="avg", dense_units=()
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=runtime.jit_compile,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * batch, INPUT_SIZE, INPUT_SIZE, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, 4 * batch)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).repeat().prefetch(2)
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        windows.append(steps / (time.perf_counter() - start))
    return {
        "model": model_name,
        "precision": runtime.precision,
        "output_dtype": str(model.output.dtype),
        "jit_compile": runtime.jit_compile,
        "steps_per_window": steps,
        "windows_steps_per_second": [round(speed, 4) for speed in windows],
        "steps_per_second": round(max(windows), 4),
    }


def _run_child(model_name: str, precision: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", model_name, precision]
    command += ["--batch", str(args.batch), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{model_name}/{precision} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _auto_precision() -> str:
    from kerastl.training.device_facts import DeviceFacts
    from kerastl.training.precision import choose_precision

    return choose_precision("auto", DeviceFacts.detect(), "default")


def main(argv: list[str] | None = None) -> dict:
    """Run every model under float32 and the auto precision; write the JSON report."""
    args = _parse_args(argv)
    if args.child:
        print(json.dumps(measure(*args.child, args.batch, args.steps, args.warmup, args.repeats)))
        return {}
    auto = _auto_precision()
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "auto_precision": auto,
        "batch": args.batch,
        "load_average_before": [round(load, 2) for load in os.getloadavg()],
        "target_speedup": TARGET_SPEEDUP,
        "runs": [],
        "speedups": {},
    }
    for model_name in args.models:
        baseline = _run_child(model_name, "float32", args)
        candidate = _run_child(model_name, auto, args)
        speedup = candidate["steps_per_second"] / baseline["steps_per_second"]
        report["runs"] += [baseline, candidate]
        report["speedups"][model_name] = round(speedup, 3)
        print(
            f"{model_name}: float32 {baseline['steps_per_second']:.3f} steps/s, "
            f"{auto} {candidate['steps_per_second']:.3f} steps/s -> {speedup:.2f}x "
            f"(target >= {TARGET_SPEEDUP}x)",
            flush=True,
        )
    report["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

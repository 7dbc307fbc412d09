"""Training throughput of the kerastl ``Trainer`` vs plain ``keras.Model.fit``.

kerastl owns its train step (``strategy.run`` over a ``GradientTape`` step, see
``kerastl/training/trainer.py``) so that one loop works under every strategy. This checks
that owning it costs nothing: the same model (every layer trainable, no feature
cache), the same in-memory ``tf.data`` pipeline, batch, optimizer, loss and
precision, timed per epoch after a warm-up epoch (tracing, oneDNN kernel
selection). Rounds alternate which engine runs first, so a neighbour process
loading the CPU hurts both alike. Prints the ratio (target >= 0.97) and writes
``benchmarks/results/throughput.json``.

Example:
    python benchmarks/throughput.py
    python benchmarks/throughput.py --image-size 64 --rounds 3 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerastl  # noqa: E402
from kerastl.training.phase_data import PhaseData
from kerastl.training.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "throughput.json"
TARGET_RATIO = 0.97
NUM_CLASSES = 5


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="MobileNetV2")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNet width")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, engines alternating")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


def _time_trainer(model, dataset, steps: int, epochs: int) -> list[float]:
    """Seconds per timed epoch of the kerastl Trainer (first epoch is warm-up)."""
    timer = _EpochTimer()
    trainer = Trainer(model, tf.distribute.get_strategy(), optimizer="adam",
                      schedule="constant", callbacks=[timer], verbose=0)
    data = PhaseData(model, lambda epoch: dataset, None, steps_per_epoch=steps)
    trainer.run([kerastl.Phase("full", epochs + 1, mode="full", lr=1e-4)], lambda _: data)
    return timer.seconds[1:]


def _time_fit(model, dataset, epochs: int) -> list[float]:
    """Seconds per timed epoch of ``model.fit`` (first epoch is warm-up)."""
    timer = _EpochTimer()
    model.fit(dataset, epochs=epochs + 1, callbacks=[timer], shuffle=False, verbose=0)
    return timer.seconds[1:]


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    images = rng.uniform(0, 255, (n, args.image_size, args.image_size, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, n).astype("int32")
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch)
               .prefetch(tf.data.AUTOTUNE))
    # One model for both engines: the Trainer sets the "full" regime (every layer
    # trainable, BatchNorm in inference mode), then fit compiles the same layers.
    model = kerastl.build_model(args.backbone, NUM_CLASSES, input_shape=args.image_size,
                                weights=None, head="avg", dense_units=(), dropout=0.0,
                                backbone_kwargs={"alpha": args.alpha})
    kerastl.set_regime(model, "full", recompile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])

    seconds: dict[str, list[float]] = {"kerastl_trainer": [], "keras_fit": []}
    load_before = os.getloadavg()
    for round_index in range(args.rounds):
        order = ["kerastl_trainer", "keras_fit"]
        for engine in order if round_index % 2 == 0 else order[::-1]:
            if engine == "kerastl_trainer":
                seconds[engine] += _time_trainer(model, dataset, args.steps, args.epochs)
            else:
                seconds[engine] += _time_fit(model, dataset, args.epochs)

    def images_per_second(values: list[float]) -> dict:
        rates = [n / s for s in values]
        return {"epoch_seconds": [round(s, 4) for s in values],
                "best": round(max(rates), 2), "median": round(statistics.median(rates), 2)}

    engines = {name: images_per_second(values) for name, values in seconds.items()}
    ratio = engines["kerastl_trainer"]["best"] / engines["keras_fit"]["best"]
    median_ratio = engines["kerastl_trainer"]["median"] / engines["keras_fit"]["median"]
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "model": f"{args.backbone}(alpha={args.alpha}) at {args.image_size}px, every "
                 "layer trainable, no feature cache",
        "precision": args.precision, "batch": args.batch, "images_per_epoch": n,
        "timed_epochs_per_engine": args.epochs * args.rounds,
        "images_per_second": engines,
        "ratio_best": round(ratio, 4), "ratio_median": round(median_ratio, 4),
        "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"kerastl Trainer: {engines['kerastl_trainer']['best']:.1f} images/s (median "
          f"{engines['kerastl_trainer']['median']:.1f}); keras fit: "
          f"{engines['keras_fit']['best']:.1f} images/s (median "
          f"{engines['keras_fit']['median']:.1f})")
    print(f"ratio {ratio:.3f} (median {median_ratio:.3f}); target >= {TARGET_RATIO} "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}. Written to {args.output}")
    return result


if __name__ == "__main__":
    main()

"""GPU throughput: ResNet50 at 224x224, mixed_float16, XLA on/off, a batch sweep.

Ready for a GPU machine (none here): trains ResNet50 (``weights=None``, every layer
trainable) through kerastl's Trainer on synthetic images held on the device, and
prints images/s and the fraction of the GPU's peak tensor-core throughput.

    python benchmarks/gpu.py                         # on a GPU machine
    python benchmarks/gpu.py --batches 32,64 --peak-tflops 312
    python benchmarks/gpu.py --allow-cpu --batches 4 --steps 3 --image-size 64  # smoke

ResNet50 costs about 4.1 GFLOPs per 224x224 image forward; training is counted as
3x that (forward + two backward matmuls), so 12.3 GFLOPs per image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
TRAIN_FLOPS_PER_IMAGE_224 = 3 * 4.1e9
# Dense fp16/bf16 tensor-core peaks (TFLOP/s) for common GPUs; pass --peak-tflops
# for others.
PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0,
               "T4": 65.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


def child(batch: int, xla: bool, steps: int, image_size: int, precision: str) -> dict:
    """One measurement in this process (the dtype policy is global)."""
    import numpy as np
    import tensorflow as tf

    import kerastl
    from kerastl.config.schema import Phase
    from kerastl.training.phase_data import PhaseData
    from kerastl.training.trainer import Trainer

    runtime = kerastl.setup_runtime("default", precision, batch_size=batch, jit_compile=xla)
    with runtime.strategy.scope():
        model = kerastl.build_model("ResNet50", 1000, input_shape=image_size, weights=None,
                                    mode="full", head="avg", dense_units=())
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, image_size, image_size, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 1000, batch))
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()

    def epoch(n: int) -> tf.data.Dataset:
        return data.take(steps)

    trainer = Trainer(model, runtime.strategy, optimizer="sgd", schedule="constant",
                      jit_compile=xla, verbose=0, log=lambda *_: None)
    phase = Phase("full", 2, mode="full", lr=0.01)
    timings = []
    trainer.run([phase], lambda p: PhaseData(model, epoch, None, steps),
                on_epoch_end=lambda s: timings.append(s.history[-1]["seconds"]))
    seconds = timings[-1]  # the second epoch: traced and warm
    return {"batch": batch, "xla": xla, "precision": precision, "image_size": image_size,
            "images_per_second": round(batch * steps / seconds, 1)}


def gpu_name() -> str | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="mixed_float16")
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        batch, xla = args.child.split(":")
        print(json.dumps(child(int(batch), xla == "1", args.steps, args.image_size,
                               args.precision)))
        return 0
    name = gpu_name()
    if name is None and not args.allow_cpu:
        print("No GPU found: run this on a GPU machine (or --allow-cpu for a smoke run).")
        return 0
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if name and k in name),
                                    None)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for xla in (False, True):
            command = [sys.executable, __file__, "--child", f"{batch}:{int(xla)}",
                       "--steps", str(args.steps), "--image-size", str(args.image_size),
                       "--precision", args.precision if name else "float32"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"batch": batch, "xla": xla, "error": done.stderr[-300:]})
                print(f"batch {batch:4d} xla {'on ' if xla else 'off'}  failed (see JSON)")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            flops = row["images_per_second"] * TRAIN_FLOPS_PER_IMAGE_224 * (
                args.image_size / 224) ** 2
            row["fraction_of_peak"] = round(flops / (peak * 1e12), 3) if peak else None
            rows.append(row)
            print(f"batch {batch:4d} xla {'on ' if xla else 'off'}  "
                  f"{row['images_per_second']:8.1f} images/s  "
                  f"peak fraction {row['fraction_of_peak']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"gpu": name, "peak_tflops": peak, "runs": rows}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Feature extraction speed against this CPU's measured matmul peak.

For each (backbone, input side), a child process under the precision kerastl picks
for it (``setup_runtime(precision="auto", backbone=...)``) measures:

* the matmul peak: a ``--matmul``-square bfloat16 and float32 ``tf.matmul``, best of
  ``--repeats`` calls, once before and once after the extraction timings (the best
  of both is the peak; the machine is shared, so both see the same neighbours);
* kerastl's extraction (``kerastl.models.features.run_extractor``, the cached forward pass
  of frozen phases, on ``ImageData`` batches) at several batch sizes, best of
  ``--repeats`` passes over ``--images`` images;
* the fraction of the peak: images/s x 2 x MACs per image / peak FLOP/s, with MACs
  counted from the built layers (``benchmarks._common.count_macs``: Conv2D,
  DepthwiseConv2D, Dense; VGG16 15.35 G and ResNet50 3.86 G at 224, matching the
  published 15.5 G / 3.9-4.1 G).

The goal (issue 11): at 224x224, VGG16 and ResNet50 extract at >= 60% of the
bfloat16 matmul peak. Also recorded: which batch size was fastest at each size, the
evidence for ``kerastl.models.features.extraction_batch_size``. Writes
``benchmarks/results/extraction.json``.

Example:
    python benchmarks/extraction.py
    python benchmarks/extraction.py --workloads VGG16@32 --batches 32,256 --images 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CpuClock,
    count_macs,
    emit,
    load_average,
    python_command,
    run_process,
    write_results,
)

GOAL_FRACTION = 0.60
GOAL_WORKLOADS = ("VGG16@224", "ResNet50@224")
DEFAULT_WORKLOADS = ("VGG16@224", "ResNet50@224", "VGG16@32", "ResNet50@32",
                     "MobileNetV2:1.0@224", "MobileNetV2:0.35@32")


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS),
                        help="BACKBONE[:ALPHA]@SIDE")
    parser.add_argument("--batches", default=None,
                        help="comma list of batch sizes (default: 8..64 at 224, 32..512 "
                             "at 32)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per timed pass (default: 64 at 224, 1024 at 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=4096, help="side of the peak matmul")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_workload(text: str) -> dict:
    """``"MobileNetV2:0.35@32"`` -> backbone, alpha, size."""
    name, size = text.split("@")
    backbone, _, alpha = name.partition(":")
    return {"backbone": backbone, "alpha": float(alpha) if alpha else None, "size": int(size)}


def _default_batches(size: int) -> list[int]:
    return [8, 16, 32, 64] if size >= 128 else [32, 64, 128, 256, 512]


def matmul_peak(side: int, repeats: int) -> dict:
    """Best FLOP/s of a ``side``-square matmul in bfloat16 and float32."""
    import tensorflow as tf

    peak = {}
    for dtype in (tf.bfloat16, tf.float32):
        a = tf.cast(tf.random.stateless_uniform((side, side), (0, 1)), dtype)
        b = tf.cast(tf.random.stateless_uniform((side, side), (1, 2)), dtype)
        matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)), autograph=False)
        matmul(a, b).numpy()  # kernel selection
        rates, utilisation = [], []
        for _ in range(repeats):
            clock = CpuClock()
            matmul(a, b).numpy()
            timing = clock.stop()
            rates.append(2 * side ** 3 / timing["wall_seconds"])
            utilisation.append(timing["cpu_utilisation"])
        peak[dtype.name] = {"flops_per_second_runs": [round(r) for r in rates],
                            "flops_per_second": round(max(rates)),
                            "cpu_utilisation_runs": utilisation}
    return peak


def child(spec: dict) -> dict:
    import numpy as np

    import kerastl
    from kerastl.models.build import feature_extractor
    from kerastl.models.features import extraction_batch_size, run_extractor
    from kerastl.training.runtime import setup_runtime

    runtime = setup_runtime("default", "auto", batch_size=32, backbone=spec["backbone"])
    kwargs = {"alpha": spec["alpha"]} if spec["alpha"] is not None else {}
    model = kerastl.build_model(spec["backbone"], 10, input_shape=spec["size"], weights=None,
                                head="avg", dense_units=(), backbone_kwargs=kwargs)
    macs = count_macs(model)["total"]
    extractor = feature_extractor(model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec["images"], spec["size"], spec["size"], 3), np.uint8)
    data = kerastl.data.arrays.from_arrays(images, rng.integers(0, 10, spec["images"]))
    peak_before = matmul_peak(spec["matmul"], spec["repeats"])
    timings = {}
    for batch in spec["batches"]:
        run_extractor(extractor, data, batch_size=batch)  # trace + kernel selection
        rates, utilisation = [], []
        for _ in range(spec["repeats"]):
            clock = CpuClock()
            run_extractor(extractor, data, batch_size=batch)
            timing = clock.stop()
            rates.append(spec["images"] / timing["wall_seconds"])
            utilisation.append(timing["cpu_utilisation"])
        timings[str(batch)] = {"images_per_second_runs": [round(r, 2) for r in rates],
                               "images_per_second": round(max(rates), 2),
                               "cpu_utilisation_median": statistics.median(utilisation)}
    peak_after = matmul_peak(spec["matmul"], spec["repeats"])
    return {"precision": runtime.precision, "precision_reason": runtime.precision_reason,
            "macs_per_image": macs, "kerastl_batch": extraction_batch_size(spec["size"]),
            "peak_before": peak_before, "peak_after": peak_after, "batches": timings}


def summarise(workload: str, measured: dict) -> dict:
    """Peak, best batch, kerastl's batch, fractions of the peak."""
    dtype = "bfloat16" if measured["precision"] == "mixed_bfloat16" else "float32"
    peaks = {name: max(measured["peak_before"][name]["flops_per_second"],
                       measured["peak_after"][name]["flops_per_second"])
             for name in ("bfloat16", "float32")}
    flops = 2 * measured["macs_per_image"]
    batches = measured["batches"]
    best_batch = max(batches, key=lambda b: batches[b]["images_per_second"])
    ours = str(measured["kerastl_batch"])
    rate = batches[ours]["images_per_second"] if ours in batches else None
    best_rate = batches[best_batch]["images_per_second"]
    return {
        "workload": workload, "precision": measured["precision"],
        "gflops_per_image": round(flops / 1e9, 4),
        "peak_gflops": {name: round(value / 1e9, 1) for name, value in peaks.items()},
        "best_batch": int(best_batch), "best_images_per_second": best_rate,
        "kerastl_batch": int(ours), "kerastl_images_per_second": rate,
        "kerastl_vs_best_batch": None if rate is None else round(rate / best_rate, 3),
        # Against the peak of the dtype the convolutions run in, and against bf16's.
        "fraction_of_own_dtype_peak": None if rate is None
        else round(rate * flops / peaks[dtype], 3),
        "fraction_of_bf16_peak": None if rate is None
        else round(rate * flops / peaks["bfloat16"], 3),
    }


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.child:
        emit(child(json.loads(args.child)))
        return 0
    load_before = load_average()
    runs, summary = {}, []
    for workload in args.workloads:
        spec = parse_workload(workload)
        spec["batches"] = ([int(b) for b in args.batches.split(",")] if args.batches
                           else _default_batches(spec["size"]))
        spec["images"] = args.images or (64 if spec["size"] >= 128 else 1024)
        spec.update(repeats=args.repeats, matmul=args.matmul)
        result = run_process(python_command(__file__, "--child", json.dumps(spec)))
        runs[workload] = {"spec": spec, "process": {k: v for k, v in result.items()
                                                    if k != "printed"},
                          **result["printed"]}
        row = summarise(workload, result["printed"])
        summary.append(row)
        print(json.dumps(row), flush=True)
    goals = {}
    for workload in GOAL_WORKLOADS:
        row = next((r for r in summary if r["workload"] == workload), None)
        if row is not None and row["fraction_of_bf16_peak"] is not None:
            goals[workload] = {"fraction_of_bf16_peak": row["fraction_of_bf16_peak"],
                               "goal": GOAL_FRACTION,
                               "met": row["fraction_of_bf16_peak"] >= GOAL_FRACTION}
    write_results("extraction", {"goal": f">= {GOAL_FRACTION:.0%} of the bfloat16 matmul "
                                         f"peak at 224x224 for {', '.join(GOAL_WORKLOADS)}",
                                 "summary": summary, "goals": goals, "runs": runs},
                  load_before=load_before, output=args.output)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())

"""Both cores? Throughput and CPU utilisation of kerastl's training step (issue 11).

Each configuration runs kerastl's own training step (``benchmarks/_step.py``: the
Trainer's step on kerastl's input pipeline, every layer training) in a fresh process,
because the dtype policy, the thread pools and op determinism cannot change once
TensorFlow has started. Every variant differs from the baseline in one setting:

* ``deterministic``: ``tf.config.experimental.enable_op_determinism()`` (what every CPU
  run had before ``--deterministic`` became opt-in);
* ``pipeline=tensors`` / ``pipeline=repeat``: batches sliced from in-memory tensors,
  or one batch repeated (no input pipeline: the model-only upper bound);
* ``intra_op=1`` / ``inter_op=1``: TensorFlow's thread pools cut to one thread (what a
  second core is worth);
* ``private_threadpool_size=1``: tf.data on one thread;
* ``autotune=off``: tf.data without its autotuner (kerastl's extraction pass runs so);
* ``precision``: float32 against mixed_bfloat16, which is the evidence for
  ``kerastl.training.precision.CPU_FLOAT32_FAMILIES`` (bfloat16 is emulated, and slower, on a CPU
  without ``avx512_bf16``: the flags are recorded).

Utilisation is process CPU seconds per wall second over the timed windows (2.0 = both
cores busy on this machine). Writes ``benchmarks/results/cores.json``.

Example:
    python benchmarks/cores.py
    # where one intra-op thread stops paying (kerastl.training.runtime.CPU_ONE_THREAD_MAX_SIDE):
    python benchmarks/cores.py --variants baseline deterministic intra_op=1 \
        --precision-workloads --output benchmarks/results/cores_threads.json \
        --workloads MobileNetV2:0.35@32 MobileNetV2:0.35@64 MobileNetV2:0.35@96 \
        MobileNetV3Small:0.75@64 EfficientNetB0@32 ResNet50@32/bf16 VGG16@32/bf16 \
        MobileNetV2:1.0@224
    python benchmarks/cores.py --workloads MobileNetV2:0.35@32 --variants baseline
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, run_process, write_results  # noqa: E402

STEP = Path(__file__).resolve().parent / "_step.py"
DEFAULT_WORKLOADS = ("MobileNetV2:0.35@32", "MobileNetV2:1.0@224")
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "deterministic": {"deterministic": True},
    "pipeline=tensors": {"pipeline": "tensors"},
    "pipeline=repeat": {"pipeline": "repeat"},
    "intra_op=1": {"intra_op": 1},
    "inter_op=1": {"inter_op": 1},
    "private_threadpool_size=1": {"private_threadpool_size": 1},
    "autotune=off": {"autotune": False},
    "intra_op=1+autotune=off": {"intra_op": 1, "autotune": False},
}
# Precision: float32 (the baseline) against mixed_bfloat16, per backbone at 32x32.
PRECISION_WORKLOADS = ("MobileNetV2:0.35@32", "MobileNetV3Small:0.75@32", "EfficientNetB0@32",
                       "ResNet50@32", "VGG16@32")


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS),
                        help="BACKBONE[:ALPHA]@SIDE for the utilisation variants")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--precision-workloads", nargs="*", default=list(PRECISION_WORKLOADS))
    parser.add_argument("--steps", type=int, default=8, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def parse_workload(text: str) -> dict:
    """``"MobileNetV2:0.35@32"`` -> ``{"backbone", "alpha", "size"}``; ``"VGG16@32/bf16"``
    also sets ``precision`` (what a run of it chooses on a CPU with avx512_bf16)."""
    text, _, precision = text.partition("/")
    name, size = text.split("@")
    backbone, _, alpha = name.partition(":")
    spec = {"backbone": backbone, "alpha": float(alpha) if alpha else None, "size": int(size)}
    if precision:
        spec["precision"] = {"bf16": "mixed_bfloat16", "fp32": "float32"}[precision]
    return spec


def measure(spec: dict) -> dict:
    """One ``_step.py`` child: its printed JSON plus the process's own clock."""
    result = run_process([sys.executable, str(STEP), json.dumps(spec)])
    return {**result["printed"], "process": {k: v for k, v in result.items() if k != "printed"}}


def _batch(size: int) -> int:
    return 32 if size <= 64 else 16


def main(argv=None) -> int:
    args = _parse_args(argv)
    load_before = load_average()
    common = {"steps": args.steps, "windows": args.windows}
    utilisation, precision = [], []
    for workload in args.workloads:
        spec = parse_workload(workload)
        base = {**spec, **common, "batch": _batch(spec["size"])}
        for variant in args.variants:
            run = measure({**base, **VARIANTS[variant]})
            row = {"workload": workload, "variant": variant,
                   "train_images_per_second": run["train"]["images_per_second_best"],
                   "train_cpu_utilisation": run["train"]["cpu_utilisation_median"],
                   "infer_images_per_second": run["infer"]["images_per_second_best"],
                   "infer_cpu_utilisation": run["infer"]["cpu_utilisation_median"],
                   "run": run}
            utilisation.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "run"}), flush=True)
    for workload in args.precision_workloads:
        base = {**parse_workload(workload), **common, "batch": 32}
        sides = {p: measure({**base, "precision": p}) for p in ("float32", "mixed_bfloat16")}
        rates = {p: sides[p]["train"]["images_per_second_best"] for p in sides}
        infer = {p: sides[p]["infer"]["images_per_second_best"] for p in sides}
        row = {"workload": workload, "train_images_per_second": rates,
               "bf16_train_speedup": round(rates["mixed_bfloat16"] / rates["float32"], 3),
               "infer_images_per_second": infer,
               "bf16_infer_speedup": round(infer["mixed_bfloat16"] / infer["float32"], 3),
               "runs": sides}
        precision.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    baseline = {r["workload"]: r for r in utilisation if r["variant"] == "baseline"}
    ratios = [{"workload": r["workload"], "variant": r["variant"],
               "train_vs_baseline": round(r["train_images_per_second"]
                                          / baseline[r["workload"]]["train_images_per_second"], 3)}
              for r in utilisation if r["workload"] in baseline]
    write_results("cores", {"utilisation": utilisation, "ratios": ratios,
                            "precision": precision, "goals": goals(utilisation)},
                  load_before=load_before, output=args.output)
    return 0


def goals(utilisation: list[dict]) -> dict:
    """Issue 11: kerastl's step at 32x32 >= 1.6x "today's" (op determinism on, as every
    CPU run had when it was filed), with what ``--intra-op-threads auto`` picks there
    (one thread for MobileNetV2), in this one run."""
    rates = {(r["workload"], r["variant"]): r["train_images_per_second"] for r in utilisation}
    workload = "MobileNetV2:0.35@32"
    if (workload, "deterministic") not in rates or (workload, "intra_op=1") not in rates:
        return {}
    value = rates[workload, "intra_op=1"] / rates[workload, "deterministic"]
    return {"train_throughput_vs_issue_baseline": {
        "workload": workload, "default": "intra_op=1 (--intra-op-threads auto)",
        "baseline": "deterministic", "value": round(value, 4), "goal": 1.6,
        "met": value >= 1.6}}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())

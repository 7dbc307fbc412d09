"""Frozen features under two workers: each its own share against every image (issue 28).

Two ``MultiWorkerMirroredStrategy`` workers on this machine (two processes, one
intra-op thread each, so they do not fight for the two cores) run the frozen base of
MobileNetV2 (``weights=None``, 32x32) over ``--images`` Fashion-MNIST training images
twice each, in alternating order over ``--rounds`` rounds:

* ``every image``: :func:`kerastl.models.features.run_extractor` over the whole set,
  what each worker did before (the cached-feature path read every image everywhere);
* ``shares``: :func:`kerastl.models.worker_features.extract_on_workers`, its own rows
  extracted and every row gathered back, in data order, on both workers.

Each side is timed on each worker (wall seconds, the median over rounds) and the
gathered features are checked against the whole pass. The ratio ``shares / every
image`` per worker is the figure: ideally 1/2 plus the gather. Writes
``benchmarks/results/worker_features.json``.

Example:
    python benchmarks/worker_features.py
    python benchmarks/worker_features.py --images 2000 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load_average, write_results  # noqa: E402

CHILD_TIMEOUT = 1200  # seconds; a hung collective must end the benchmark


def child(images: int, rounds: int, out: Path) -> None:
    """One worker: both sides, alternating, timed; results as JSON in ``out``."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from kerastl.training.strategies import make_strategy

    strategy = make_strategy("multiworker")
    import numpy as np

    import kerastl
    from kerastl.models.build import feature_extractor
    from kerastl.models.features import run_extractor
    from kerastl.models.worker_features import extract_on_workers

    (x, y), _, names = kerastl.fashion_mnist()
    data = kerastl.from_arrays(x[:images], y[:images], class_names=names)
    model = kerastl.build_model("MobileNetV2", 10, input_shape=32, weights=None)
    extractor = feature_extractor(model)
    run_extractor(extractor, data.subset(np.arange(64)))  # trace once, outside the timing
    times: dict[str, list[float]] = {"every image": [], "shares": []}
    extracted = 0
    for r in range(rounds):
        for side in (("every image", "shares") if r % 2 == 0 else ("shares", "every image")):
            start = time.perf_counter()
            if side == "every image":
                whole, _ = run_extractor(extractor, data)
            else:
                (shared, _), extracted = extract_on_workers(
                    strategy, lambda part: run_extractor(extractor, part), data)
            times[side].append(time.perf_counter() - start)
    out.write_text(json.dumps({
        "seconds": times, "images_extracted_in_shares": extracted,
        "max_abs_difference": float(np.abs(shared - whole).max())}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.images, args.rounds, Path(args.child))
    from kerastl.training.strategies import local_cluster  # imports TensorFlow: only here

    load_before = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        outs = [Path(scratch) / f"worker{i}.json" for i in range(2)]
        workers = [subprocess.Popen(
            [sys.executable, __file__, "--images", str(args.images), "--rounds",
             str(args.rounds), "--child", str(out)],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
                 "TF_CONFIG": config})
            for out, config in zip(outs, local_cluster(2), strict=True)]
        codes = [worker.wait(timeout=CHILD_TIMEOUT) for worker in workers]
        if codes != [0, 0]:
            raise SystemExit(f"a worker failed: exit codes {codes}")
        results = [json.loads(out.read_text()) for out in outs]
    per_worker = []
    for i, result in enumerate(results):
        medians = {side: round(statistics.median(t), 3) for side, t in result["seconds"].items()}
        ratio = round(medians["shares"] / medians["every image"], 3)
        per_worker.append({"worker": i, "median_seconds": medians, "shares_over_every_image":
                           ratio, **result})
        print(f"worker {i}: every image {medians['every image']} s, shares {medians['shares']} s"
              f" ({result['images_extracted_in_shares']} of {args.images} images): {ratio}x")
    write_results("worker_features", {
        "images": args.images, "rounds": args.rounds, "image_size": 32,
        "backbone": "MobileNetV2 (weights=None)", "workers": 2,
        "threads_per_worker": 1, "per_worker": per_worker}, load_before=load_before)


if __name__ == "__main__":
    main()

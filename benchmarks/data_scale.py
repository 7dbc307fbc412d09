"""The data layer at scale: memory, decoding speed and listing time (issue 28).

Fashion-MNIST's 60,000 training images are written as PNG class folders in a
temporary directory (never committed), with a second folder of the first 15,000
(1,500 a class). Each measurement is its own Python process:

* ``run``: a frozen ``kerastl.fit`` (MobileNetV2 alpha=0.35, ``weights=None``, 128 px,
  1 epoch, batch 64, 10 % held out for validation) on each folder: its peak RSS
  (``ru_maxrss``), wall and CPU time, and ``run.json``'s stages. The feature cache is
  off (``feature_cache="off"``), so the run reads images the way a fine-tuning run
  does and what is measured is the data layer; with it on, the cached base features
  (80 KB an image at 128 px for this backbone) are what grows. The 60,000-image run
  runs twice: with the default ``decoded_memory="auto"`` (it keeps the decoded
  images where they fit a fifth of the available memory, at most 1 GiB) and with
  ``decoded_memory=0`` (it streams). Goal: the 60,000-image run's peak RSS at most
  300 MB over the 15,000-image run's.
* ``stream``: the first epoch of each reader over the 60,000 images, through the same
  frozen base (:func:`kerastl.models.features.feature_extractor`, features dropped per
  batch): kerastl's
  ``from_folder(...).batches`` (decoded in ``tf.data`` on every core; its full
  pre-check timed apart) against ``keras.utils.image_dataset_from_directory``
  streaming the same folder. Goals: kerastl's images/s at least Keras's; kerastl's
  epoch keeps at least 170 % CPU on 2 cores.
* ``scan``: ``from_folder(..., check_files="none")`` over a simulated 1.28-million-entry
  listing (1,000 class folders of 1,281 empty files): the time to list and label an
  ImageNet-sized folder before any file is opened.

Writes ``benchmarks/results/data_scale.json``; ``--memory-only`` measures only the
two default-budget runs (the memory goal) and writes ``data_scale_memory.json``.

Example:
    python benchmarks/data_scale.py
    python benchmarks/data_scale.py --small 3000 --large 12000 --scan-entries 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS as RESULTS_DIR,
)
from _common import (
    CpuClock,
    emit,
    load_average,
    python_command,
    run_process,
    write_results,
)

SIZE = 128
BATCH = 64
EPOCHS = 1
BACKBONE, BACKBONE_KWARGS = "MobileNetV2", {"alpha": 0.35}
TARGET_RSS_GROWTH_MB = 300
TARGET_CPU_UTILISATION = 1.7
SCAN_CLASSES = 1000


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=15_000, help="images of the small run")
    parser.add_argument("--large", type=int, default=60_000, help="images of the large run")
    parser.add_argument("--scan-entries", type=int, default=1_281_000,
                        help="entries of the simulated listing")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the PNG folders go (default: a temporary directory)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--memory-only", action="store_true",
                        help="only the two runs at the default budget (the memory goal)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_folders(root: Path, small: int, large: int) -> dict[int, Path]:
    """PNG class folders of the first ``large`` and the first ``small`` training images."""
    import numpy as np
    from PIL import Image

    from kerastl.data.datasets import fashion_mnist

    (x, y), _, names = fashion_mnist()
    folders = {}
    for count in (large, small):
        folder = root / f"train{count}"
        folders[count] = folder
        if folder.exists():
            continue
        per_class = count // len(names)
        for label, name in enumerate(names):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(y == label)[:per_class]:
                Image.fromarray(x[i]).save(folder / name / f"{i}.png")
    return folders


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(data: str, decoded_memory: str) -> dict:
    """A frozen kerastl run on ``data``: peak RSS, times, run.json's stages."""
    import kerastl
    from kerastl.data.decoding import decoded_memory_budget

    out = Path(tempfile.mkdtemp(prefix="kerastl-data-scale-run-"))
    clock = CpuClock()
    kerastl.fit(kerastl.RunConfig(
        data=data, backbone=BACKBONE, backbone_kwargs=BACKBONE_KWARGS, weights="none",
        mode="frozen", image_size=SIZE, epochs=EPOCHS, batch_size=BATCH, val_split=0.1,
        feature_cache="off", decoded_memory=decoded_memory, output=str(out / "run"),
        verbose=0))
    timing = clock.stop()
    facts = json.loads((out / "run" / "run.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"peak_rss_mb": _peak_rss_mb(), **timing, "decoded_memory": decoded_memory,
            "budget_mb": round(decoded_memory_budget(decoded_memory) / 2**20),
            "images": facts["examples"]["train"] + facts["examples"]["val"],
            "seconds_breakdown": facts["seconds_breakdown"],
            "train_breakdown": facts["train_breakdown"]}


def stream_child(reader: str, data: str) -> dict:
    """One first epoch of ``reader`` through the frozen base, after a warm-up.

    The features are dropped batch by batch (``run_extractor`` would hold all of
    them: 80 KB an image here), so the peak RSS is the reader's and the model's.
    """
    import keras
    import tensorflow as tf

    import kerastl
    from kerastl.models.features import feature_extractor

    model = kerastl.build_model(BACKBONE, 10, input_shape=SIZE, weights=None,
                                backbone_kwargs=BACKBONE_KWARGS)
    extractor = feature_extractor(model)
    forward = tf.function(lambda images: tf.reduce_sum(extractor(images, training=False)))

    def epoch_of(batches) -> int:
        count = 0
        for images, _ in batches:
            forward(images).numpy()
            count += int(images.shape[0])
        return count

    facts: dict = {}
    if reader == "kerastl":
        clock = CpuClock()
        images = kerastl.from_folder(data, decoded_memory=0)
        facts["check"] = clock.stop()
        epoch_of(images.subset(range(4 * BATCH)).batches(SIZE, BATCH))  # warm-up
        clock = CpuClock()
        count = epoch_of(images.batches(SIZE, BATCH))
    else:
        def dataset():
            return keras.utils.image_dataset_from_directory(
                data, image_size=(SIZE, SIZE), batch_size=BATCH, shuffle=False,
                label_mode="int", verbose=False)

        epoch_of(dataset().take(4))  # warm-up
        clock = CpuClock()
        count = epoch_of(dataset())
    epoch = clock.stop()
    return {"reader": reader, "images": count, "epoch": epoch,
            "images_per_second": round(count / epoch["wall_seconds"], 1),
            "peak_rss_mb": _peak_rss_mb(), **facts}


def scan_child(entries: int) -> dict:
    """List and label a simulated folder of ``entries`` empty files (none opened)."""
    import kerastl

    root = Path(tempfile.mkdtemp(prefix="kerastl-data-scale-scan-"))
    try:
        per_class = -(-entries // SCAN_CLASSES)
        started = time.perf_counter()
        for c in range(SCAN_CLASSES):
            folder = root / f"n{c:08d}"
            folder.mkdir()
            for i in range(per_class):
                (folder / f"{i}.jpg").touch()
        made = time.perf_counter() - started
        clock = CpuClock()
        data = kerastl.from_folder(root, check_files="none")
        scan = clock.stop()
        return {"entries": len(data), "classes": len(data.class_names),
                "create_seconds": round(made, 1), "scan": scan, "peak_rss_mb": _peak_rss_mb()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _child(args: argparse.Namespace) -> int:
    kind, _, detail = args.child.partition(":")
    if kind == "run":
        emit(run_child(args.data, detail))
    elif kind == "stream":
        emit(stream_child(detail, args.data))
    else:
        emit(scan_child(int(detail)))
    return 0


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.child:
        return _child(args)
    load_before = load_average()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kerastl-data-scale-"))
    started = time.perf_counter()
    folders = write_folders(workdir, args.small, args.large)
    print(f"PNG folders in {workdir} ({time.perf_counter() - started:.0f} s)", flush=True)

    def child(kind: str, data: Path | None = None) -> dict:
        extra = ("--data", str(data)) if data is not None else ()
        result = run_process(python_command(__file__, "--child", kind, *extra))
        print(f"{kind} {data.name if data else ''}: {json.dumps(result['printed'])}", flush=True)
        return {**result["printed"], "process": {k: result[k] for k in
                                                 ("wall_seconds", "cpu_seconds",
                                                  "cpu_utilisation")}}

    sides = ((args.small, "auto"), (args.large, "auto"))
    runs = {f"{count}-{memory}": child(f"run:{memory}", folders[count])
            for count, memory in sides + (() if args.memory_only else ((args.large, "0"),))}
    if args.memory_only:
        return _write_memory_only(args, runs, load_before, started, workdir)
    streams = {reader: child(f"stream:{reader}", folders[args.large])
               for reader in ("kerastl", "keras")}
    scan = child(f"scan:{args.scan_entries}")

    small = runs[f"{args.small}-auto"]["peak_rss_mb"]
    growth = runs[f"{args.large}-auto"]["peak_rss_mb"] - small
    streamed_growth = runs[f"{args.large}-0"]["peak_rss_mb"] - small
    speed = (streams["kerastl"]["images_per_second"]
             / streams["keras"]["images_per_second"])
    utilisation = streams["kerastl"]["epoch"]["cpu_utilisation"]
    goals = {
        "peak_rss_growth_mb": {"value": round(growth, 1), "target": TARGET_RSS_GROWTH_MB,
                               "met": growth <= TARGET_RSS_GROWTH_MB,
                               "settings": "decoded_memory='auto' in both runs"},
        "peak_rss_growth_streaming_mb": {
            "value": round(streamed_growth, 1), "target": TARGET_RSS_GROWTH_MB,
            "met": streamed_growth <= TARGET_RSS_GROWTH_MB,
            "settings": "large run decoded_memory=0 (past any budget), small run 'auto'"},
        "first_epoch_speed_vs_keras": {"value": round(speed, 3), "target": 1.0,
                                       "met": speed >= 1.0},
        "first_epoch_cpu_utilisation": {"value": utilisation,
                                        "target": TARGET_CPU_UTILISATION,
                                        "met": utilisation >= TARGET_CPU_UTILISATION},
    }
    print(f"peak RSS: {small} MB at {args.small} images, "
          f"{runs[f'{args.large}-auto']['peak_rss_mb']} MB at {args.large} with the "
          f"default budget ({runs[f'{args.large}-auto']['budget_mb']} MB; {growth:+.0f} MB), "
          f"{runs[f'{args.large}-0']['peak_rss_mb']} MB streaming ({streamed_growth:+.0f} "
          f"MB); goal <= +{TARGET_RSS_GROWTH_MB} MB")
    print(f"first epoch at {SIZE} px: kerastl {streams['kerastl']['images_per_second']} "
          f"images/s ({utilisation:.0%} CPU), keras "
          f"{streams['keras']['images_per_second']} images/s "
          f"({streams['keras']['epoch']['cpu_utilisation']:.0%} CPU): {speed:.2f}x; "
          f"kerastl's full pre-check took {streams['kerastl']['check']['wall_seconds']} s")
    print(f"listing of {scan['entries']:,} entries: {scan['scan']['wall_seconds']} s")
    report = {"settings": {"image_size": SIZE, "batch_size": BATCH, "epochs": EPOCHS,
                           "backbone": BACKBONE, "backbone_kwargs": BACKBONE_KWARGS,
                           "small": args.small, "large": args.large},
              "runs": runs, "streams": streams,
              "scan": scan, "goals": goals,
              "total_seconds": round(time.perf_counter() - started, 1)}
    write_results("data_scale", report, load_before=load_before, output=args.output)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _write_memory_only(args: argparse.Namespace, runs: dict, load_before: list[float],
                       started: float, workdir: Path) -> int:
    small = runs[f"{args.small}-auto"]["peak_rss_mb"]
    large = runs[f"{args.large}-auto"]["peak_rss_mb"]
    growth = large - small
    print(f"peak RSS: {small} MB at {args.small} images, {large} MB at {args.large} "
          f"({growth:+.0f} MB); goal <= +{TARGET_RSS_GROWTH_MB} MB")
    report = {"settings": {"image_size": SIZE, "batch_size": BATCH, "epochs": EPOCHS,
                           "backbone": BACKBONE, "backbone_kwargs": BACKBONE_KWARGS,
                           "small": args.small, "large": args.large},
              "runs": runs,
              "goals": {"peak_rss_growth_mb": {
                  "value": round(growth, 1), "target": TARGET_RSS_GROWTH_MB,
                  "met": growth <= TARGET_RSS_GROWTH_MB,
                  "settings": "decoded_memory='auto' in both runs"}},
              "total_seconds": round(time.perf_counter() - started, 1)}
    write_results("data_scale", report, load_before=load_before,
                  output=args.output or RESULTS_DIR / "data_scale_memory.json")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

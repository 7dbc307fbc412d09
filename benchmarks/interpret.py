"""Evaluation with interpretation vs plain ``model.predict`` on the same 10,000 images.

Issue 25's goal: an evaluation that writes ``predictions.csv``, ``interpretation.json``,
``top_losses.png`` and the top losses' ``gradcam.npz`` costs at most 1.3x
``model.predict`` over the same images plus the Grad-CAM passes.

The model is the shipped source backbone (MobileNetV3Small alpha=0.75, pretrained on
Fashion-MNIST classes) with a ten-class head, at 64x64 (its last map is 2x2 there; at
32x32 it is 1x1 and Grad-CAM has nothing to weigh). The images are the 10,000
Fashion-MNIST test images (Debian's ``dataset-fashion-mnist``), or the shipped
``data_samples/`` tiled to 10,000 when those are not installed. Both sides are warmed
up once (tracing), then timed alternately; the best of ``--repeats`` is kept.

* ``predict``: ``model.predict`` on the images already decoded and resized (float32
  array), batch 64: the strict baseline, which leaves the input pipeline out.
* ``predict_pipeline``: ``model.predict`` on ``ImageData.batches`` (the batches an
  evaluation reads: from uint8 28x28, resized to 64x64 on the fly), batch 64: the
  same images through the same pipeline, so the ratio to it is the cost of the
  interpretation itself. The goal is checked on this one; both ratios are written.
* ``interpret``: :func:`kerastl.interpret` on the :class:`~kerastl.ImageData` (its own
  batched pass, resizing on the fly) and
  :func:`kerastl.outputs.interpretation_files.write_interpretation` (``--gradcam top``, 16 images),
  which includes the Grad-CAM pass, timed separately as ``gradcam``.

Example:
    python benchmarks/interpret.py              # writes benchmarks/results/interpret.json
    python benchmarks/interpret.py --images 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, write_results  # noqa: E402

import kerastl  # noqa: E402
from kerastl.data.samples import data_samples_dir, source_backbone  # noqa: E402
from kerastl.outputs.interpretation import Interpretation  # noqa: E402
from kerastl.outputs.interpretation_files import write_interpretation

GOAL_RATIO = 1.3
SIZE = 64
BATCH = 64


def _images(count: int) -> tuple[kerastl.ImageData, str]:
    try:
        (_, _), (x_test, y_test), names = kerastl.fashion_mnist()
        source = "Fashion-MNIST test images"
    except kerastl.DataError:
        samples = kerastl.from_folder(data_samples_dir() / "fashion" / "test")
        x_test = np.concatenate([x for x, _ in samples.batches(28, 256)]).astype(np.uint8)
        y_test, names = samples.labels, samples.class_names
        source = "data_samples/fashion/test tiled"
    repeat = -(-count // len(x_test))
    images, labels = np.tile(x_test, (repeat,) + (1,) * (x_test.ndim - 1))[:count], \
        np.tile(y_test, repeat)[:count]
    return kerastl.from_arrays(images, labels, class_names=list(names)), source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    load_before = load_average()
    data, source = _images(args.images)
    shipped = source_backbone()
    model = kerastl.build_model(shipped["backbone"], len(data.class_names), input_shape=SIZE,
                                weights=shipped["weights"], head="avg", dense_units=(),
                                backbone_kwargs=shipped["backbone_kwargs"])
    pixels = np.concatenate([x for x, _ in data.batches(SIZE, 256)])
    out = Path(tempfile.mkdtemp())
    model.predict(pixels[:BATCH * 2], batch_size=BATCH, verbose=0)  # warm-up: tracing
    warm = kerastl.interpret(model, data.subset(np.arange(BATCH * 2)), progress=False)
    write_interpretation(out, warm)
    timings: dict[str, list[float]] = {"predict": [], "predict_pipeline": [], "interpret": [],
                                       "gradcam": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.predict(pixels, batch_size=BATCH, verbose=0)
        timings["predict"].append(time.perf_counter() - started)
        started = time.perf_counter()
        model.predict(data.batches(SIZE, BATCH), verbose=0)
        timings["predict_pipeline"].append(time.perf_counter() - started)
        started = time.perf_counter()
        interp = kerastl.interpret(model, data, batch_size=BATCH)
        write_interpretation(out, interp)
        timings["interpret"].append(time.perf_counter() - started)
        # A fresh object, so its Grad-CAM is traced as the one inside the evaluation was.
        fresh = Interpretation(model, data, interp.class_names, interp.task,
                               interp.probabilities, interp.files)
        started = time.perf_counter()
        fresh.gradcam(interp.top_loss_indices(16))
        timings["gradcam"].append(time.perf_counter() - started)
    best = {key: min(values) for key, values in timings.items()}
    ratio = best["interpret"] / (best["predict_pipeline"] + best["gradcam"])
    strict = best["interpret"] / (best["predict"] + best["gradcam"])
    print(f"{len(data)} images ({source}) at {SIZE}x{SIZE}, {shipped['backbone']}:")
    print(f"  model.predict, decoded array   {best['predict']:.2f} s")
    print(f"  model.predict, ImageData       {best['predict_pipeline']:.2f} s")
    print(f"  Grad-CAM of the 16 top losses  {best['gradcam']:.2f} s")
    print(f"  evaluation with interpretation {best['interpret']:.2f} s")
    print(f"  ratio {ratio:.3f} to predict on the same batches (goal <= {GOAL_RATIO}): "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}; {strict:.3f} to predict on the "
          "decoded array")
    write_results("interpret", {
        "images": len(data), "source": source, "image_size": SIZE, "batch_size": BATCH,
        "backbone": shipped["backbone"], "seconds": timings, "best_seconds": best,
        "ratio": round(ratio, 4), "ratio_to_decoded_array": round(strict, 4),
        "goal": f"interpret <= {GOAL_RATIO} x (predict_pipeline + gradcam)",
        "met": ratio <= GOAL_RATIO,
    }, load_before=load_before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

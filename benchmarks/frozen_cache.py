"""Frozen-base training: kerastl's feature cache vs the plain Keras recipe.

VGG16 (``weights=None``) on 32x32 RGB Fashion-MNIST, 2,000 training images,
10 epochs, batch 32, side by side in one process:

* ``keras_recipe``: the textbook recipe, frozen base inside the graph,
  ``model.compile`` + ``model.fit`` on images for every epoch;
* ``kerastl_fit``: ``kerastl.fit(mode="frozen", augment=[])`` on image folders,
  every output written (model.keras, reports, checkpoints); the run notes must say
  the feature cache was used;
* ``kerastl_trainer``: the same machinery without ``fit``'s outputs, the
  ``Trainer`` on ``cached_feature_datasets``;
* ``floor``: one ``predict`` pass of the base over the same 2,000 images, the
  least work any frozen-base training must do.

Every timing includes building the model (and, for ``kerastl_fit``, decoding the
PNG files); the floor is the bare ``predict`` call. Each path also sees the same
200 validation images (the floor does not). Prints the seconds, kerastl's speed-up
over the recipe (target >= 6x) and its total over the floor (target <= 1.3x), and
writes ``benchmarks/results/frozen_cache.json``.

Example:
    python benchmarks/frozen_cache.py
    python benchmarks/frozen_cache.py --train 500 --epochs 3   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerastl  # noqa: E402
from kerastl.config import Phase  # noqa: E402
from kerastl.datasets import fashion_mnist  # noqa: E402
from kerastl.feature_cache import FeatureCache  # noqa: E402
from kerastl.features import cached_feature_datasets  # noqa: E402
from kerastl.model import head_model  # noqa: E402
from kerastl.training import PhaseData, Trainer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "frozen_cache.json"
TARGET_SPEEDUP = 6.0
TARGET_OVER_FLOOR = 1.3
SIZE = 32
NUM_CLASSES = 10


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _rgb32(images: np.ndarray) -> np.ndarray:
    """28x28 grey → 32x32x3 uint8 (zero padding keeps the pixels exact)."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1)


def _load(n_train: int, n_val: int):
    (x_train, y_train), (x_test, y_test), names = fashion_mnist()
    return (_rgb32(x_train[:n_train]), y_train[:n_train],
            _rgb32(x_test[:n_val]), y_test[:n_val], names)


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names) -> Path:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def _timed(action):
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def floor(x_train, batch) -> float:
    """One forward pass of the frozen base over the training images."""
    base = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(SIZE, SIZE, 3))
    seconds, _ = _timed(lambda: base.predict(
        keras.applications.vgg16.preprocess_input(x_train.astype("float32")),
        batch_size=batch, verbose=0))
    return seconds


def keras_recipe(x_train, y_train, x_val, y_val, epochs, batch) -> dict:
    """The plain Keras transfer-learning recipe: frozen base inside the graph."""

    def run():
        keras.utils.set_random_seed(0)
        base = keras.applications.VGG16(include_top=False, weights=None,
                                        input_shape=(SIZE, SIZE, 3))
        base.trainable = False
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.applications.vgg16.preprocess_input(inputs)
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        history = model.fit(x_train.astype("float32"), y_train, batch_size=batch,
                            epochs=epochs, validation_data=(x_val.astype("float32"), y_val),
                            verbose=0)
        return history.history["val_accuracy"][-1]

    seconds, accuracy = _timed(run)
    return {"seconds": seconds, "val_accuracy": float(accuracy)}


def kerastl_fit(train_dir, val_dir, output, epochs, batch) -> dict:
    """``kerastl.fit`` in frozen mode: feature cache plus every output file."""
    config = kerastl.RunConfig(
        data=str(train_dir), val_data=str(val_dir), backbone="VGG16", weights=None,
        image_size=SIZE, batch_size=batch, epochs=epochs, mode="frozen", augment=[],
        dropout=0.2, verbose=0, seed=0, output=str(output),
    )
    result = kerastl.fit(config)
    return {"seconds": result.seconds, "val_accuracy": result.history[-1]["val_accuracy"],
            "notes": result.notes,
            "cache_used": any("cached base features" in note for note in result.notes)}


def kerastl_trainer(x_train, y_train, x_val, y_val, epochs, batch) -> dict:
    """The Trainer on ``cached_feature_datasets``: kerastl's machinery, no report files."""

    stamps = {"start": time.perf_counter()}
    epochs_done: list[float] = []

    def run():
        keras.utils.set_random_seed(0)
        model = kerastl.build_model("VGG16", NUM_CLASSES, input_shape=SIZE, weights=None,
                                    head="avg", dense_units=(), dropout=0.2)
        stamps["built"] = time.perf_counter()
        train = kerastl.data.from_arrays(x_train, y_train)
        val = kerastl.data.from_arrays(x_val, y_val, class_names=train.class_names)
        cached = cached_feature_datasets(model, train, val, image_size=SIZE, batch_size=batch,
                                         cache=FeatureCache(), seed=0)
        stamps["features"] = time.perf_counter()
        head = head_model(model)
        steps = int(np.ceil(len(train) / batch))
        trainer = Trainer(model, tf.distribute.get_strategy(), verbose=0, log=lambda *_: None)
        state = trainer.run([Phase("frozen", epochs, mode="frozen", lr=1e-3)],
                            lambda phase: PhaseData(head, cached.train, cached.val, steps),
                            on_epoch_end=lambda _: epochs_done.append(time.perf_counter()))
        return state.history[-1]["val_accuracy"]

    seconds, accuracy = _timed(run)
    # Where the time goes: building, one base pass over train + val, then the
    # head's epochs (the first includes tracing the train and eval steps).
    first_epoch = epochs_done[0] - stamps["features"]
    return {"seconds": seconds, "val_accuracy": float(accuracy), "breakdown": {
        "build_model": stamps["built"] - stamps["start"],
        "features_train_and_val": stamps["features"] - stamps["built"],
        "first_epoch_incl_tracing": first_epoch,
        "later_epochs": epochs_done[-1] - epochs_done[0],
    }}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    x_train, y_train, x_val, y_val, names = _load(args.train, args.val)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="kerastl-frozen-cache-") as tmp:
        train_dir = _write_folder(Path(tmp) / "train", x_train, y_train, names)
        val_dir = _write_folder(Path(tmp) / "val", x_val, y_val, names)
        # Untimed: TensorFlow's one-off start-up (thread pools, oneDNN kernels) would
        # otherwise be charged to whichever path runs first.
        floor(x_train[: args.batch], args.batch)
        results["floor"] = {"seconds": floor(x_train, args.batch)}
        print(f"floor (base predict, {args.train} images): {results['floor']['seconds']:.1f}s",
              flush=True)
        results["kerastl_trainer"] = kerastl_trainer(x_train, y_train, x_val, y_val,
                                                     args.epochs, args.batch)
        print(f"kerastl Trainer + cache: {results['kerastl_trainer']['seconds']:.1f}s "
              + ", ".join(f"{k} {v:.1f}s"
                          for k, v in results["kerastl_trainer"]["breakdown"].items()),
              flush=True)
        results["kerastl_fit"] = kerastl_fit(train_dir, val_dir, Path(tmp) / "run",
                                             args.epochs, args.batch)
        print(f"kerastl.fit (all outputs): {results['kerastl_fit']['seconds']:.1f}s "
              f"cache used: {results['kerastl_fit']['cache_used']}", flush=True)
        results["keras_recipe"] = keras_recipe(x_train, y_train, x_val, y_val,
                                               args.epochs, args.batch)
        print(f"Keras recipe (compile + fit): {results['keras_recipe']['seconds']:.1f}s",
              flush=True)
    recipe, base = results["keras_recipe"]["seconds"], results["floor"]["seconds"]
    summary = {}
    for name in ("kerastl_fit", "kerastl_trainer"):
        seconds = results[name]["seconds"]
        summary[name] = {"speedup_vs_keras": recipe / seconds, "over_floor": seconds / base,
                         "meets_speedup": recipe / seconds >= TARGET_SPEEDUP,
                         "meets_floor": seconds / base <= TARGET_OVER_FLOOR}
        print(f"{name}: {recipe / seconds:.1f}x faster than the Keras recipe "
              f"(target >= {TARGET_SPEEDUP}x), {seconds / base:.2f}x the floor "
              f"(target <= {TARGET_OVER_FLOOR}x)")
    report = {
        "setup": {"backbone": "VGG16", "weights": None, "image_size": SIZE,
                  "train_images": args.train, "val_images": args.val, "epochs": args.epochs,
                  "batch_size": args.batch, "dataset": "Fashion-MNIST padded to 32x32 RGB"},
        "seconds": {k: round(v["seconds"], 2) for k, v in results.items()},
        "results": results, "summary": summary,
        "targets": {"speedup_vs_keras": TARGET_SPEEDUP, "over_floor": TARGET_OVER_FLOOR},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

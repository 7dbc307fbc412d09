"""The plain Keras frozen-base script kerastl's frozen mode is compared with.

What the textbook recipe (and the seed documents) do, nothing more: images from class
folders with ``keras.utils.image_dataset_from_directory`` (20 % held out for
validation), a VGG16 base with ``include_top=False`` and ``trainable=False`` inside the
model, Flatten, Dense 256 + ReLU, softmax, Adam, ``model.fit`` on the images every
epoch. Keras's default float32 policy: the script sets none, as a user's would not.

Prints one JSON line (wall seconds of the fit, final validation accuracy), which
``benchmarks/frozen_cache.py`` reads; run as its own process.

Example:
    python benchmarks/seed_keras_frozen.py DIR --epochs 10 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)

    import keras

    started = time.perf_counter()
    size = (args.image_size, args.image_size)
    train, val = keras.utils.image_dataset_from_directory(
        args.data, image_size=size, batch_size=args.batch_size, validation_split=0.2,
        subset="both", seed=0)
    classes = len(train.class_names)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(*size, 3))
    base.trainable = False
    inputs = keras.Input((*size, 3))
    x = keras.applications.vgg16.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=args.epochs, verbose=0)
    print(json.dumps({"fit_seconds": round(time.perf_counter() - started, 3),
                      "val_accuracy": float(history.history["val_accuracy"][-1]),
                      "precision": keras.mixed_precision.global_policy().name}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

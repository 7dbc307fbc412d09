"""Child process: time kerastl's training step and forward pass for one configuration.

``throughput.py`` and ``precision.py`` run this once per configuration, so each
gets a fresh interpreter with its own dtype policy, thread pools and determinism
setting (none of which can be changed once TensorFlow has started). It prints one
JSON line: images/s of each timed window, the best and median, the CPU utilisation
(process CPU seconds per wall second, all threads) during the windows, and the
model's multiply-accumulates per image.

The training step is kerastl's own (``Trainer.prepare_phase`` + ``Trainer.step``,
mode "full": every layer trains, BatchNorm in inference mode, as in the default
run's fine-tune) on kerastl's own input pipeline (``ImageData.batches``: indices →
``numpy_function`` pixel loader → batch → cast → augmentation → prefetch), unless
``pipeline`` says otherwise.

Example:
    python benchmarks/_step.py '{"backbone": "MobileNetV2", "alpha": 0.35, "size": 32}'
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CpuClock, count_macs, emit  # noqa: E402

DEFAULTS = {
    "backbone": "MobileNetV2", "alpha": None, "size": 32, "precision": "float32",
    "batch": 32, "steps": 10, "windows": 3, "warmup": 3, "images": 512,
    "deterministic": False,
    # TensorFlow thread pools: None keeps TensorFlow's default (one thread per core).
    "intra_op": None, "inter_op": None,
    # "kerastl": ImageData.batches (the real path); "tensors": batches sliced from
    # in-memory tensors (no numpy_function); "repeat": one batch repeated (no input
    # pipeline at all: the model-only upper bound).
    "pipeline": "kerastl",
    "augment": ["flip", "translate"],
    # tf.data options applied to the training dataset (None: kerastl's defaults).
    "private_threadpool_size": None, "autotune": None, "prefetch": None,
    "jit_compile": False, "steps_per_execution": 1,
    "measure": ["train", "infer"],
    "infer_batch": None,
}


def main(spec: dict) -> dict:
    spec = {**DEFAULTS, **spec}
    import tensorflow as tf

    if spec["intra_op"] is not None:
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra_op"])
    if spec["inter_op"] is not None:
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op"])
    import keras
    import numpy as np

    import kerastl
    from kerastl.training.runtime import setup_runtime

    runtime = setup_runtime("default", spec["precision"], batch_size=spec["batch"])
    keras.utils.set_random_seed(0)
    if spec["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    kwargs = {"alpha": spec["alpha"]} if spec["alpha"] is not None else {}
    model = kerastl.build_model(spec["backbone"], 10, input_shape=spec["size"], weights=None,
                                head="avg", dense_units=(), dropout=0.0, backbone_kwargs=kwargs)
    result = {"spec": spec, "precision": runtime.precision,
              "macs_per_image": count_macs(model)["total"],
              "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                          "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec["images"], spec["size"], spec["size"], 3), np.uint8)
    labels = rng.integers(0, 10, spec["images"])
    if "train" in spec["measure"]:
        result["train"] = _time_train(spec, runtime, model, images, labels)
    if "infer" in spec["measure"]:
        result["infer"] = _time_infer(spec, model, images)
    return result


def _dataset(spec, images, labels, epoch: int):
    import tensorflow as tf

    import kerastl
    from kerastl.data.augmentation import augmentation

    augment = augmentation(spec["augment"], seed=epoch) if spec["augment"] else None
    if spec["pipeline"] == "kerastl":
        data = kerastl.data.arrays.from_arrays(images, labels)
        dataset = data.batches(spec["size"], spec["batch"], shuffle_seed=epoch, augment=augment)
    else:
        count = spec["batch"] if spec["pipeline"] == "repeat" else len(images)
        x = tf.constant(images[:count].astype("float32"))
        y = tf.constant(labels[:count])
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(spec["batch"])
        if augment is not None:
            dataset = dataset.map(lambda a, b: (augment(a, training=True), b))
        dataset = dataset.cache().repeat() if spec["pipeline"] == "repeat" else dataset
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if spec["prefetch"] is not None:
        dataset = dataset.prefetch(spec["prefetch"])
    options = tf.data.Options()
    if spec["private_threadpool_size"] is not None:
        options.threading.private_threadpool_size = spec["private_threadpool_size"]
    if spec["autotune"] is not None:
        options.autotune.enabled = bool(spec["autotune"])
    return dataset.with_options(options).repeat()


def _time_train(spec, runtime, model, images, labels) -> dict:
    import tensorflow as tf

    from kerastl.recipes.plan import Phase
    from kerastl.training.phase_data import PhaseData
    from kerastl.training.trainer import Trainer

    trainer = Trainer(model, runtime.strategy, optimizer="adamw", schedule="constant",
                      jit_compile=spec["jit_compile"],
                      steps_per_execution=spec["steps_per_execution"],
                      verbose=0, log=lambda *_: None)
    per_call = spec["steps_per_execution"]
    steps = spec["steps"]
    data = PhaseData(model, lambda epoch: None, None, steps_per_epoch=steps)
    trainer.prepare_phase(Phase("full", 1, mode="full", lr=1e-4), data)
    iterator = iter(_dataset(spec, images, labels, 0))
    clock = CpuClock()
    for _ in range(spec["warmup"]):  # tracing, oneDNN primitive creation
        trainer.step(iterator, per_call)
    warmup = clock.stop()
    rates, clocks = [], []
    for _ in range(spec["windows"]):
        clock = CpuClock()
        for _ in range(steps):
            trainer.step(iterator, per_call)
        window = clock.stop()
        clocks.append(window)
        rates.append(steps * per_call * spec["batch"] / window["wall_seconds"])
    del tf
    return _summary(rates, clocks, warmup)


def _time_infer(spec, model, images) -> dict:
    import numpy as np
    import tensorflow as tf

    from kerastl.models.build import feature_extractor
    from kerastl.models.features import extraction_batch_size

    batch = spec["infer_batch"] or extraction_batch_size(spec["size"])
    extractor = feature_extractor(model)
    forward = tf.function(lambda x: extractor(x, training=False), autograph=False)
    x = tf.constant(np.resize(images, (batch, *images.shape[1:])).astype("float32"))
    clock = CpuClock()
    for _ in range(max(1, spec["warmup"] // 2)):
        forward(x).numpy()
    warmup = clock.stop()
    rates, clocks = [], []
    repeats = max(1, (spec["steps"] * spec["batch"]) // batch)
    for _ in range(spec["windows"]):
        clock = CpuClock()
        for _ in range(repeats):
            forward(x).numpy()
        window = clock.stop()
        clocks.append(window)
        rates.append(repeats * batch / window["wall_seconds"])
    return {**_summary(rates, clocks, warmup), "batch": batch}


def _summary(rates: list[float], clocks: list[dict], warmup: dict) -> dict:
    return {
        "images_per_second_windows": [round(r, 2) for r in rates],
        "images_per_second_best": round(max(rates), 2),
        "images_per_second_median": round(statistics.median(rates), 2),
        "cpu_utilisation_windows": [c["cpu_utilisation"] for c in clocks],
        "cpu_utilisation_median": statistics.median(c["cpu_utilisation"] for c in clocks),
        "warmup_seconds": warmup["wall_seconds"],
    }


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    emit(main(json.loads(sys.argv[1])))

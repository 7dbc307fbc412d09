"""Running an exported file: its runtime, agreement with Keras, latency and sizes."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..core import backend as _backend  # noqa: F401
from ..core.errors import MissingDependencyError
from ..training.pruning import gzip_size

INSTALL_HINT = "pip install 'kerastl[export]'"


LATENCY_RUNS = 50


RUN_NEEDS = {"savedmodel": (), "litert": ("ai_edge_litert",), "onnx": ("onnxruntime",)}


DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert"}


def require_modules(modules: tuple[str, ...], format: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"Exporting to {format} needs {', '.join(missing)}, which is not installed. "
            f"Install the export extra: {INSTALL_HINT}."
        )


# ------------------------------------------------------------------ runtimes
def load_runtime(path: str | os.PathLike, format: str, num_threads: int | None = None
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """A ``predict(batch) -> outputs`` function running an exported file in its own runtime.

    LiteRT: ``ai_edge_litert.interpreter.Interpreter``; ONNX: ``onnxruntime``;
    SavedModel: ``tf.saved_model.load`` and its ``serve`` endpoint.

    Example:
        >>> predict = load_runtime("runs/a/exports/litert/model.tflite", "litert")  # doctest: +SKIP
        >>> predict(images).shape  # doctest: +SKIP
        (8, 5)
    """
    require_modules(RUN_NEEDS[format], format)
    threads = num_threads or os.cpu_count() or 1
    path = str(path)
    if format == "savedmodel":
        loaded = tf.saved_model.load(path)  # keep it: its functions need its variables

        return lambda batch: np.asarray(loaded.serve(tf.constant(batch, tf.float32)))
    if format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options,
                                               providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: np.asarray(batch, np.float32)})[0]
    return _litert_predict(path, threads)


def _litert_predict(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    shape: list[tuple] = [()]

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.shape != shape[0]:  # the batch dimension is dynamic: resize once per shape
            interpreter.resize_tensor_input(source, batch.shape)
            interpreter.allocate_tensors()
            shape[0] = batch.shape
        interpreter.set_tensor(source, batch)
        interpreter.invoke()
        return interpreter.get_tensor(target).copy()

    return predict


def agreeing(task: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if task == "multiclass":
        return a.argmax(-1) == b.argmax(-1)
    same = (a >= 0.5) == (b >= 0.5)
    return same.reshape(len(a), -1).all(axis=1)


def latency(model: keras.Model, runtime: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
            runs: int = LATENCY_RUNS) -> dict[str, float]:
    """Median milliseconds of one-image inference: Keras predict, a compiled call, the export.

    ``model.predict`` is what most Keras code calls (its per-call overhead is part
    of the number); ``keras_call`` is a compiled ``tf.function`` call, the fastest
    way to run the Keras model in Python.
    """
    compiled = tf.function(lambda x: model(x, training=False))
    tensor = tf.constant(image)
    return {
        "keras_predict": _median_ms(lambda: model.predict(image, verbose=0), runs),
        "keras_call": _median_ms(lambda: np.asarray(compiled(tensor)), runs),
        "exported": _median_ms(lambda: runtime(image), runs),
        "runs": int(runs),
    }


def _median_ms(call: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, int(runs))):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return float(statistics.median(times))


# ------------------------------------------------------------------ outputs
def file_sizes(keras_file: Path, exported: Path) -> dict[str, Any]:
    exported_bytes = _size(exported)
    sizes = {"keras": keras_file.stat().st_size, "exported": exported_bytes,
             "keras_gzip": gzip_size(keras_file)}
    if exported.is_file():
        sizes["exported_gzip"] = gzip_size(exported)
    sizes["ratio"] = sizes["keras"] / max(1, exported_bytes)
    return sizes


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

"""One batched pass of model.predict over the images, with a progress bar where someone
watches."""

from __future__ import annotations

import sys
import time
from typing import Any

import keras
import numpy as np

from ..core import backend as _backend  # noqa: F401


def predict_probabilities(model: keras.Model, data: Any, *, batch_size: int = 64,
                          progress: bool = True) -> np.ndarray:
    """The model's outputs on every image of ``data``: one batched pass, in data order.

    ``model.predict`` itself, so the pass costs what a plain Keras prediction costs
    (its compiled predict function is kept on the model between calls).
    """
    callbacks = [ProgressCallback(Progress(len(data), "predict"), batch_size,
                                   len(data))] if progress else []
    outputs = model.predict(data.batches(int(model.input_shape[1]), batch_size), verbose=0,
                            callbacks=callbacks)
    return np.asarray(outputs, np.float32)


class ProgressCallback(keras.callbacks.Callback):
    def __init__(self, bar: Progress, batch_size: int, total: int) -> None:
        super().__init__()
        self.bar, self.batch_size, self.total = bar, batch_size, total

    def on_predict_batch_end(self, batch, logs=None) -> None:
        self.bar.update(min(self.batch_size, self.total - self.bar.done))

    def on_predict_end(self, logs=None) -> None:
        self.bar.close()


class Progress:
    """A progress bar on a terminal; one line at the end when stdout is redirected.

    No ANSI escape and no carriage return ever reaches a log file.

    Example:
        >>> import io
        >>> bar = Progress(10, "predict", stream=io.StringIO())
        >>> bar.update(10); bar.close()
    """

    def __init__(self, total: int, label: str, stream=None) -> None:
        self.total, self.label, self.done = int(total), label, 0
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, count: int) -> None:
        self.done += int(count)
        if self.live:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r{self.label} [{'=' * filled}{' ' * (width - filled)}] "
                              f"{self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        seconds = time.perf_counter() - self.started
        if self.live:
            self.stream.write("\n")
        if self.live or self.total >= 1000:  # short passes stay quiet in logs
            self.stream.write(f"{self.label}: {self.done} images in {seconds:.1f} s\n")
            self.stream.flush()

"""The forward pass of a model over a batched dataset, on this process."""

from __future__ import annotations

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..core import backend as _backend  # noqa: F401
from ..core.console import batches_in, progress


def predict(model: keras.Model, dataset: tf.data.Dataset,
            label: str = "Predicting") -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels over a batched ``(x, y)`` dataset, on this process.

    A progress bar (``label``) is drawn where a person watches the output live.
    """
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                       autograph=False)
    outputs, labels = [], []
    for x, y in progress(dataset, total=batches_in(dataset), label=label):
        outputs.append(np.asarray(call(x)))
        labels.append(np.asarray(y))
    return np.concatenate(outputs), np.concatenate(labels)

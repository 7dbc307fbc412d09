"""The forward pass of a model over a batched dataset, on this process."""

from __future__ import annotations

import weakref

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
    call = _inference_function(model)
    outputs, labels = [], []
    for x, y in progress(dataset, total=batches_in(dataset), label=label):
        outputs.append(np.asarray(call(x)))
        labels.append(np.asarray(y))
    return np.concatenate(outputs), np.concatenate(labels)


# One traced inference function per model, reused by every pass over it: a notebook or a
# benchmark predicting split after split with one model traced the whole model again on
# each pass (TensorFlow then warns about retracing). The trace reads the model's
# variables, so weights assigned later (fitting, loading, pruning) are seen; it assumes
# the model's structure does not change after its first pass, as no kerastl model does.
# Weak on both sides: the cache keeps no model alive, and the function reaches its
# model through a weak reference.
_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_function(model: keras.Model):
    call = _INFERENCE.get(model)
    if call is None:
        reference = weakref.ref(model)

        def forward(x):
            alive = reference()
            if alive is None:
                raise ReferenceError("the model of this inference function no longer exists")
            return alive(x, training=False)

        call = tf.function(forward, reduce_retracing=True, autograph=False)
        _INFERENCE[model] = call
    return call

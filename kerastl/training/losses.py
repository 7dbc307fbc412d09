"""Losses, class weights and the counts a step reports, for every task."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..config.choices import CLASS_WEIGHTS
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError


# ------------------------------------------------------------------ losses
def class_weights_for(kind: str, task: str, labels: np.ndarray,
                      n_classes: int) -> list[float] | None:
    """Per-class loss weights: None for ``"none"``, inverse frequency for ``"balanced"``.

    Multiclass and binary tasks (binary 0/1 labels are class ids); multilabel
    examples have no single class and are refused.

    Example:
        >>> class_weights_for("balanced", "multiclass", np.array([0, 0, 0, 1]), 2)
        [0.6666666666666666, 2.0]
    """
    if kind not in CLASS_WEIGHTS:
        raise ConfigError(f"class_weight must be one of {CLASS_WEIGHTS}; received "
                          f"class_weight={kind!r}.")
    if kind == "none":
        return None
    if task == "multilabel":
        raise ConfigError(
            "class_weight='balanced' weights each example by its class, which a multilabel "
            "example does not have; received task='multilabel', class_weight='balanced'. "
            "Use --class-weight none."
        )
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights.tolist()


def make_loss(task: str, label_smoothing: float = 0.0) -> Callable:
    """Per-example loss ``(y_true, y_pred) -> (batch,)`` for the task."""
    if task == "multiclass":
        loss = keras.losses.CategoricalCrossentropy(
            label_smoothing=label_smoothing, reduction=None
        )

        def multiclass(y_true, y_pred):
            depth = tf.shape(y_pred)[-1]
            one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), depth)
            return loss(one_hot, y_pred)

        return multiclass
    binary = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=None)
    if task == "binary":
        return lambda y_true, y_pred: binary(
            tf.reshape(tf.cast(y_true, y_pred.dtype), [-1, 1]), y_pred
        )
    return lambda y_true, y_pred: binary(tf.cast(y_true, y_pred.dtype), y_pred)


def correct_count(task: str, y_true, y_pred):
    """Correctly predicted examples in a batch, and the number of examples.

    The ``accuracy`` of :func:`kerastl.outputs.reports.classification_metrics`: the arg-max
    class, or ``sigmoid >= 0.5``; a multilabel example counts when every label is
    right (exact match), so history and ``metrics.json`` report the same number.
    """
    if task == "multiclass":
        hits = tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                        tf.cast(tf.reshape(y_true, [-1]), tf.int32))
    elif task == "binary":
        hits = tf.equal(tf.reshape(y_pred, [-1]) >= 0.5,
                        tf.reshape(tf.cast(y_true, tf.float32), [-1]) > 0.5)
    else:
        hits = tf.reduce_all(tf.equal(y_pred >= 0.5, tf.cast(y_true, tf.float32) > 0.5), -1)
    hits = tf.cast(hits, tf.float32)
    return tf.reduce_sum(hits), tf.cast(tf.size(hits), tf.float32)


def evaluation_losses(task: str, y_true, y_prob, *, label_smoothing: float = 0.0,
                      class_weights: Sequence[float] | None = None) -> dict:
    """``loss`` as the trainer reports it, plain ``cross_entropy``, and their definitions.

    ``loss`` is the training objective: the mean per-example loss with the run's
    label smoothing and class weights, which is what ``history.csv``'s ``loss`` and
    ``val_loss`` are. ``cross_entropy`` has neither, to compare runs that differ in them.

    Example:
        >>> out = evaluation_losses("binary", [0, 1], [[0.2], [0.9]], label_smoothing=0.1)
        >>> round(out["cross_entropy"], 4), out["loss"] > out["cross_entropy"]
        (0.1643, True)
    """
    y_prob = tf.constant(np.asarray(y_prob, dtype=np.float32))
    per_example = np.asarray(make_loss(task, label_smoothing)(y_true, y_prob))
    weighting = ""
    if class_weights is not None:
        ids = np.asarray(y_true).reshape(-1).astype(np.int64)
        per_example = per_example * np.asarray(class_weights)[ids]
        weighting = ", weighted by class_weight"
    cross_entropy = np.asarray(make_loss(task)(y_true, y_prob))
    kind = "categorical" if task == "multiclass" else "binary"
    every = " (every label right)" if task == "multilabel" else ""
    return {
        "loss": float(np.mean(per_example)),
        "cross_entropy": float(np.mean(cross_entropy)),
        "definitions": {
            "loss": f"mean {kind} cross-entropy with label_smoothing={label_smoothing:g}"
                    f"{weighting}: the training objective, as history.csv's loss and val_loss",
            "cross_entropy": f"mean {kind} cross-entropy, no label smoothing or class weights",
            "accuracy": f"share of examples predicted right{every}, as history.csv's accuracy",
        },
    }

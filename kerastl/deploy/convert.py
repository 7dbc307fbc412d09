"""Keras model to SavedModel, LiteRT or ONNX, with Keras's own model.export."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..core import backend as _backend  # noqa: F401
from ..core.errors import DataError


# ------------------------------------------------------------------ conversion
def convert(model: keras.Model, directory: Path, format: str, quantize: str = "none",
            calibration: np.ndarray | None = None) -> str:
    """Write ``model`` in ``format`` into ``directory``; return the file's name.

    Args:
        model: keras.Model.
        directory: Path. An existing folder.
        format: str. ``"savedmodel"``, ``"litert"`` or ``"onnx"``.
        quantize: str. LiteRT quantization (see :func:`export`).
        calibration: np.ndarray, optional. Raw-pixel images for ``"int8"``.

    Example:
        >>> convert(model, Path("out"), "litert", "float16")  # doctest: +SKIP
        'model_float16.tflite'
    """
    model = float32_copy(model)
    if format == "savedmodel":
        name = "saved_model"
        with _quiet():
            model.export(str(directory / name), format="tf_saved_model", verbose=False)
        return name
    if format == "onnx":
        name = "model.onnx"
        _normalization_reads_its_variables(model)
        with _quiet():
            model.export(str(directory / name), format="onnx", verbose=False)
        return name
    name = "model.tflite" if quantize == "none" else f"model_{quantize}.tflite"
    with _quiet():
        model.export(str(directory / name), format="litert", verbose=False,
                     **litert_options(quantize, calibration))
    return name


def _normalization_reads_its_variables(model: keras.Model) -> None:
    """Point each adapted ``Normalization`` (the multi-depth head's standardisation) at
    its own mean and variance variables, in place.

    Why: Keras keeps them as eager constants made in ``finalize_state``; traced for ONNX,
    tf2onnx leaves such captures as graph inputs, and the runtime then asks for
    ``depths_standardise/Sub/y:0`` beside the image. Variables are frozen into the graph
    like any weight. Only for a last-axis layer, where the (F,) variables broadcast as
    the (1, F) constants did.
    """
    for layer in model._flatten_layers():
        if (isinstance(layer, keras.layers.Normalization) and layer.built
                and layer.input_mean is None and not layer.invert
                and layer._keep_axis == (len(layer._build_input_shape) - 1,)):
            layer.mean, layer.variance = layer.adapt_mean, layer.adapt_variance


def strip_tensor_names(path: str | os.PathLike) -> int:
    """Drop the tensor names of a ``.tflite`` file in place; return the bytes saved.

    The converter names every tensor after its Keras layer path
    (``kerastl_mobilenetv3small_1/backbone_1/expanded_conv_9_...``): about 6 % of an
    int8 MobileNetV3Small, which the runtime never reads. Unlike TensorFlow's
    ``flatbuffer_utils.strip_strings``, the signature (``serving_default``, input
    ``image``) is kept, so ``get_signature_runner`` still works.

    Example:
        >>> strip_tensor_names("exports/litert-int8/model_int8.tflite")  # doctest: +SKIP
        49368
    """
    from tensorflow.lite.tools import flatbuffer_utils

    path = Path(path)
    before = path.stat().st_size
    model = flatbuffer_utils.read_model(str(path))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.name = None
    flatbuffer_utils.write_model(model, str(path))
    return before - path.stat().st_size


def _refresh_normalization(model: keras.Model) -> None:
    """Make adapt-style Normalization layers use the weights just set.

    Keras's Normalization computes with tensors copied from its variables when it is
    adapted or loaded (``finalize_state``); ``set_weights`` changes the variables only,
    so a copied multi-depth head would standardise with mean 0 and variance 1.
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _refresh_normalization(layer)
        elif isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()


def float32_copy(model: keras.Model) -> keras.Model:
    """The model with every layer computing in float32, called once, for converters.

    A run trained under ``mixed_bfloat16`` (kerastl's choice on CPUs with AVX-512
    BF16) or ``mixed_float16`` saves layers that compute in 16 bits; TensorFlow Lite
    has no bfloat16 kernels (they would need the Flex delegate) and ONNX export
    requires float32. The variables are float32 already, so the copy holds the very
    same weights.

    Example:
        >>> float32_copy(model).layers[-1].compute_dtype  # doctest: +SKIP
        'float32'
    """
    if policy_name(model) != "float32":
        copy = model.__class__.from_config(_float32_config(model.get_config()))
        copy.set_weights(model.get_weights())
        _refresh_normalization(copy)
        model = copy
    # Keras's ONNX exporter refuses a model that was never called (a freshly loaded one).
    model(np.zeros((1, *model.input_shape[1:]), np.float32), training=False)
    return model


def _float32_config(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def litert_options(quantize: str, calibration: np.ndarray | None = None) -> dict[str, Any]:
    """TensorFlow Lite converter settings for a quantization (Keras passes them on).

    Example:
        >>> sorted(litert_options("float16"))
        ['optimizations', 'target_spec']
    """
    if quantize == "none":
        return {}
    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise DataError("quantize='int8' needs calibration images; received none.")

        def representative_dataset() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        options["representative_dataset"] = representative_dataset
        # Full integer: every op in int8, or the conversion fails (no silent float
        # fallback that would leave the model slow on integer-only accelerators).
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
    return options


@contextlib.contextmanager
def _quiet():
    """Keep converter chatter (tf2onnx's optimizer tracebacks, NumPy 2 shims) off."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def policy_name(model: keras.Model) -> str:
    names = {layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)}
    return next((n for n in sorted(names) if n != "float32"), "float32")

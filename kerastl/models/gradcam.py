"""Grad-CAM: where in the image the model looked for the class it predicted.

Selvaraju et al., "Grad-CAM" (ICCV 2017): the feature map ``A`` of a convolutional
layer, weighted per channel by the mean gradient of the class score over the map,
summed over channels and rectified: ``relu(sum_k mean_ij(d score / d A_ijk) * A_k)``.

Which map: a kerastl model's backbone is a Keras Applications base built with
``include_top=False`` and no pooling, so the base's output *is* its last spatial
feature map for every registered architecture; that is the default layer and the
registry needs no field for it. ``layer=`` (``--gradcam-layer``) names another layer
of the base (or of the outer model), e.g. an earlier one when the last map is 1x1
(a stride-32 network at 32x32 input). A plain Keras model (not built by kerastl)
uses its last layer with a 4-D output.

Which score: the *network's* logit of the class (the Dense layer before the output
activation). With the pixel blend (``kerastl.recipes.pixel_blend``) the model's output is
``activation(network_logits + pixel_logits)``; the pixel logits do not depend on the
feature map, so the heatmap explains the network's logits of the class the blended
model predicts. Gradients are taken in float32 even when the model computes in
float16/bfloat16 (``mixed_float16``): the map and its gradient are cast before the
weighting.

Example:
    >>> import numpy as np, kerastl
    >>> from kerastl.models.gradcam import gradcam_heatmaps
    >>> model = kerastl.build_model("MobileNetV2", 2, input_shape=32, weights=None,
    ...                             head="avg", dense_units=(),
    ...                             backbone_kwargs={"alpha": 0.35})
    >>> images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3))
    >>> maps = gradcam_heatmaps(model, images, [0, 1, 0], layer="block_6_expand_relu")
    >>> maps.shape, maps.dtype, float(maps.max()) <= 1.0
    ((3, 32, 32), dtype('float32'), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from .freezing import BACKBONE_LAYER, DEPTHS_LAYER, PREPROCESS_LAYER, base_nodes
from .linear_probe import PREDICTIONS_LAYER

# The blend's copy of the network's own output layer without its activation.
NETWORK_LOGITS_LAYER = "network_logits"


@dataclass
class CamModel:
    """The parts of a model Grad-CAM runs: pixels → feature map → network logits.

    ``__call__`` runs ``pre`` (pixels to the input of the layer that holds the map),
    ``tap`` (that layer's map and the output of the part it sits in) and ``post`` (to
    the features the logits layer reads), then the logits layer's kernel, all under
    the caller's ``tf.GradientTape``.

    Attributes:
        layer: str. The layer whose output is the feature map.
        explains: str. Whose score the heatmap explains (said in reports).
        map_shape: tuple. ``(height, width, channels)`` of the feature map.
    """

    layer: str
    explains: str
    map_shape: tuple[int, int, int]
    pre: keras.Model | None
    tap: keras.Model
    post: keras.Model
    kernel: tf.Variable | None
    bias: tf.Variable | None

    def step(self):
        """The compiled heatmap step, traced once per CamModel."""
        if getattr(self, "_step", None) is None:
            self._step = _gradcam_step(self)
        return self._step

    def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = images if self.pre is None else self.pre(images, training=False)
        feature_map, part_output = self.tap(x, training=False)
        features = tf.cast(self.post(part_output, training=False), tf.float32)
        if self.kernel is None:  # no Dense logits layer: log-probabilities
            return feature_map, tf.math.log(tf.maximum(features, 1e-12))
        return feature_map, tf.matmul(features, tf.cast(self.kernel, tf.float32)) + tf.cast(
            self.bias, tf.float32)


def cam_model(model: keras.Model, layer: str | None = None) -> CamModel:
    """The :class:`CamModel` of ``model`` for the feature map of ``layer``.

    Args:
        model: keras.Model. A kerastl model (also blended or loaded from
            ``model.keras``) or a plain Keras image classifier.
        layer: str, optional. Layer whose output is the map: a layer of the
            backbone, or of the outer model. Defaults to the backbone's output (a
            plain Keras model: its last layer with a 4-D output).

    Returns:
        A :class:`CamModel`.

    Raises:
        ConfigError: no such layer, a layer without a 4-D output, or a map of 1x1
            (nothing to localise; the message names layers with a larger map).

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 2, input_shape=64, weights=None)
        >>> cam = cam_model(model)
        >>> cam.layer, cam.map_shape
        ('backbone', (2, 2, 512))
    """
    logits_layer = _logits_layer(model)
    kernel = bias = None
    if isinstance(logits_layer, keras.layers.Dense):
        kernel, bias = logits_layer.kernel, logits_layer.bias
        features, explains = logits_layer.input, f"the logits of {logits_layer.name!r}"
    else:
        features, explains = model.outputs[0], "the log-probabilities of the output"
    if NETWORK_LOGITS_LAYER in _layer_names(model):
        explains = ("the network's logits (the pixel blend's pixel logits do not depend "
                    "on the feature map)")
    names = _layer_names(model)
    if DEPTHS_LAYER in names:
        return _last_depth_cam(model, layer, features, explains, kernel, bias)
    if BACKBONE_LAYER in names and PREPROCESS_LAYER in names:
        base = model.get_layer(BACKBONE_LAYER)
        nodes = base_nodes(model)
        if len(nodes) != 1:
            raise ConfigError(f"Grad-CAM needs a model that calls its {BACKBONE_LAYER!r} "
                              f"layer once; {model.name!r} calls it {len(nodes)} times.")
        if layer in (None, BACKBONE_LAYER):
            pre = keras.Model(model.inputs, nodes[0].input_tensors[0])
            tap = keras.Model(base.inputs, [base.outputs[0], base.outputs[0]])
            post = keras.Model(nodes[0].output_tensors[0], features)
            return _checked(CamModel(BACKBONE_LAYER, explains, _map_shape(base.outputs[0]),
                                     pre, tap, post, kernel, bias), base)
        if layer not in _layer_names(base):
            tapped = _outer_layer(model, layer)
            if tapped is None:
                raise ConfigError(f"No layer {layer!r} in the backbone or the model "
                                  f"{model.name!r} (the Grad-CAM layer).")
            return _outer_cam(model, tapped, features, explains, kernel, bias)
        inner = base.get_layer(layer)
        _check_spatial(inner, base)
        pre = keras.Model(model.inputs, nodes[0].input_tensors[0])
        tap = keras.Model(base.inputs, [inner.output, base.outputs[0]])
        post = keras.Model(nodes[0].output_tensors[0], features)
        return _checked(CamModel(layer, explains, _map_shape(inner.output), pre, tap, post,
                                 kernel, bias), base)
    if layer is None:
        spatial = [each for each in model.layers if _is_spatial(each)]
        if not spatial:
            raise ConfigError(f"Model {model.name!r} has no layer with a 4-D (spatial) output: "
                              "Grad-CAM needs a convolutional feature map.")
        tapped = spatial[-1]
    else:
        tapped = _outer_layer(model, layer)
        if tapped is None:
            raise ConfigError(f"No layer {layer!r} in model {model.name!r} (gradcam layer).")
    return _outer_cam(model, tapped, features, explains, kernel, bias)


def _outer_cam(model, tapped, features, explains, kernel, bias) -> CamModel:
    _check_spatial(tapped, model)
    return _checked(_tensor_cam(model, tapped.name, tapped.output, features, explains, kernel,
                                bias), model)


def _tensor_cam(model, name, tensor, features, explains, kernel, bias) -> CamModel:
    """A CamModel tapping ``tensor`` of ``model``'s own graph."""
    tap = keras.Model(model.inputs, [tensor, features])
    identity = keras.Input(shape=features.shape[1:])
    post = keras.Model(identity, identity)
    return CamModel(name, explains, _map_shape(tensor), None, tap, post, kernel, bias)


def _last_depth_cam(model, layer, features, explains, kernel, bias) -> CamModel:
    """A multi-depth probe (kerastl.models.multi_depth): the base's last map.

    The probe's logits also read earlier depths and the pixels, which the last map does
    not change; the heatmap shows the last depth's share, and ``explains`` says so.
    """
    if layer not in (None, BACKBONE_LAYER):
        raise ConfigError(f"Grad-CAM of a multi-depth probe taps its base's last map; "
                          f"received layer={layer!r}. Leave --gradcam-layer out.")
    base = model.get_layer(BACKBONE_LAYER)
    last = base_nodes(model)[0].output_tensors[-1]
    explains = (f"{explains}, through the base's last map (the probe also reads earlier "
                "depths and the pixels, which the heatmap leaves out)")
    return _checked(_tensor_cam(model, BACKBONE_LAYER, last, features, explains, kernel, bias),
                    base)


def _checked(cam: CamModel, where: keras.Model) -> CamModel:
    height, width, _ = cam.map_shape
    if height * width <= 1:
        larger = [each.name for each in where.layers if _is_spatial(each)
                  and not isinstance(each, keras.layers.ZeroPadding2D)
                  and _map_shape(each.output)[0] * _map_shape(each.output)[1] > 1]
        hint = (f" Layers with a larger map, last first: {', '.join(larger[::-1][:3])}."
                if larger else "")
        raise ConfigError(
            f"Grad-CAM has no spatial map to localise with: the output of {cam.layer!r} is "
            f"{height}x{width} at this input size (the backbone has no spatial map left). "
            "Use larger images, or --gradcam-layer NAME (gradcam(layer=...)) for an "
            f"earlier layer.{hint}")
    return cam


def _layer_names(model: keras.Model) -> set[str]:
    return {each.name for each in model.layers}


def _logits_layer(model: keras.Model):
    names = _layer_names(model)
    if NETWORK_LOGITS_LAYER in names:
        return model.get_layer(NETWORK_LOGITS_LAYER)
    if PREDICTIONS_LAYER in names:
        return model.get_layer(PREDICTIONS_LAYER)
    producer = model.outputs[0]._keras_history.operation
    return producer


def _outer_layer(model: keras.Model, name: str):
    return model.get_layer(name) if name in _layer_names(model) else None


def _is_spatial(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def _check_spatial(layer, where: keras.Model) -> None:
    if not _is_spatial(layer):
        raise ConfigError(f"Layer {layer.name!r} of {where.name!r} has output shape "
                          f"{tuple(layer.output.shape)}; Grad-CAM needs a 4-D feature map "
                          "(batch, height, width, channels).")


def _map_shape(tensor) -> tuple[int, int, int]:
    return tuple(int(d) if d is not None else 0 for d in tensor.shape[1:4])


def gradcam_heatmaps(
    model: keras.Model | CamModel,
    images: np.ndarray | Iterable[np.ndarray],
    classes: Sequence[int] | np.ndarray,
    *,
    layer: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Grad-CAM heatmaps of ``classes`` at the model's input size, each scaled to [0, 1].

    One gradient pass per batch: images are independent in inference mode, so the
    gradient of the summed class scores gives every image's own gradient.

    Args:
        model: keras.Model or CamModel. See :func:`cam_model`.
        images: array ``(N, H, W, 3)`` of raw pixels (as the model takes them), or
            an iterable of such batches.
        classes: int per image: the class whose score is explained (usually the
            predicted one).
        layer: str, optional. As for :func:`cam_model` (ignored for a CamModel).
        batch_size: int. Images per gradient pass when ``images`` is an array.

    Returns:
        float32 array ``(N, H, W)``; each map divided by its maximum (all zeros where
        no location raises the score).
    """
    cam = model if isinstance(model, CamModel) else cam_model(model, layer)
    classes = np.asarray(classes, np.int64).reshape(-1)
    if isinstance(images, np.ndarray):
        batches: Iterable = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    else:
        batches = images
    step = cam.step()
    maps, start = [], 0
    for batch in batches:
        batch = tf.convert_to_tensor(np.asarray(batch, np.float32))
        count = int(batch.shape[0])
        maps.append(np.asarray(step(batch, tf.constant(classes[start:start + count]))))
        start += count
    if start != len(classes):
        raise ConfigError(f"gradcam_heatmaps got {start} images and {len(classes)} classes.")
    if not maps:
        return np.zeros((0, 0, 0), np.float32)
    return np.concatenate(maps).astype(np.float32)


def _gradcam_step(cam: CamModel):
    def step(images, classes):
        with tf.GradientTape() as tape:
            # Watching the pixels records every op after them, so the gradient reaches
            # a map inside a frozen base (non-trainable variables are not watched).
            tape.watch(images)
            feature_map, logits = cam(images)
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        gradient = tf.cast(tape.gradient(score, feature_map), tf.float32)
        feature_map = tf.cast(feature_map, tf.float32)
        weights = tf.reduce_mean(gradient, axis=(1, 2), keepdims=True)
        heat = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1, keepdims=True))
        heat = tf.image.resize(heat, tf.shape(images)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(heat, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(heat, peak)

    return tf.function(step, reduce_retracing=True)

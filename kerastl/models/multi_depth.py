"""A linear probe on every depth of a frozen backbone (Head2Toe, Evci et al., ICML 2022).

Why: the last layer of a source network is specialised to the source's classes; a
logistic regression on it (the classic frozen probe) transfers badly when the target
classes are new or the source is weak. Earlier blocks keep the texture and shape
features that survive a change of classes. MEASURED on the transfer suite's validation
images (``benchmarks/multi_depth_probe.py``, results in
``benchmarks/results/multi_depth_probe.json``): a probe on the pooled outputs of every
block, plus the pooled pixels, beat the last-layer probe on the weak-source and 5-shot
tasks.

What the probe reads, in one forward pass of the frozen base:

* **depths**: the output of each registry block
  (:func:`kerastl.models.freezing.backbone_blocks`; at most :data:`MAX_DEPTHS`, evenly
  spaced, the last block always), each global-average-pooled, and early blocks (at
  most :data:`SPATIAL_MAX_WIDTH` values a map) also average-pooled to a 2x2 grid,
  as Head2Toe pools early layers spatially;
* **pixels**: the input image scaled to [0, 1] and average-pooled to at most
  :data:`PIXEL_SIDE` a side,
  depth 0 of the probe.

Each group is standardised feature by feature (each std floored at a fraction of its
group's median) and scaled by ``1/sqrt(width)``, so every group carries the same total
variance whatever its width; one logistic regression is fitted on the concatenation,
its ``C`` chosen by stratified cross-validation on the training images. The
standardisation is a ``Normalization`` layer before the Dense ``predictions``, so the
result is one Keras model of built-in layers (pooling, ``Concatenate``,
``Normalization``, ``Dense``): it saves, loads in plain Keras and exports like any
kerastl model.

With ``--mode auto`` (``head="multidepth"``) the fitted probe is where fine-tuning
starts: the whole network then trains with the multi-depth head, BatchNorm in inference
mode, like the default network trains after its last-layer probe.

Example:
    >>> import numpy as np, kerastl
    >>> model = kerastl.build_model("MobileNetV2", 2, input_shape=32, weights=None,
    ...                             head="avg", dense_units=(),
    ...                             backbone_kwargs={"alpha": 0.35})
    >>> data = kerastl.from_arrays(np.random.default_rng(0).integers(
    ...     0, 255, (12, 32, 32, 3)).astype("uint8"), [0, 1] * 6)
    >>> probe, facts = kerastl.multi_depth_probe(model, data)
    >>> probe.output.shape, facts["groups"][0]["name"]
    ((None, 2), 'pixels')
"""

from __future__ import annotations

import math
import time
from typing import Any

import keras  # noqa: E402
import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from .build import feature_extractor, head_model
from .features import run_extractor
from .freezing import (
    BACKBONE_LAYER,
    DEPTHS_LAYER,
    PREPROCESS_LAYER,
    backbone_blocks,
    find_backbone,
)
from .linear_probe import PREDICTIONS_LAYER, fit_probe

# At most this many depths are read (evenly spaced over the blocks, the last always):
# DenseNet and NASNet have 50+ blocks, whose features a few labelled images cannot
# weigh one by one.
MAX_DEPTHS = 12
# A block's map is also pooled to 2x2 where that gives at most this many values (early,
# narrow blocks); wider maps are only global-average-pooled.
SPATIAL_MAX_WIDTH = 1024
# The pixels are average-pooled to at most this side (16x16x3 = 768 values).
PIXEL_SIDE = 16
PIXELS_SCALE = "pixels_scale"
# The Normalization layer between the concatenated depths and ``predictions``.
STANDARDISE_LAYER = "depths_standardise"
# Fitted on at most this many training images (a seeded draw).
MAX_FIT_IMAGES = 5000


def multi_depth_model(model: keras.Model, *, max_depths: int = MAX_DEPTHS) -> keras.Model:
    """``model``'s preprocessing and base, read at several depths, into a new Dense head.

    The new model calls the very layers of ``model`` (no copy): its ``backbone`` is a
    multi-output view of the same base, run in inference mode. Its ``predictions``
    layer is freshly initialised; :func:`fit_multi_depth_probe` fits it.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model` (any head).
        max_depths: int. Most block outputs read. Defaults to :data:`MAX_DEPTHS`.

    Returns:
        A functional model named like ``model``; :func:`feature_groups` lists its
        groups of features.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 3, input_shape=32, weights=None)
        >>> probe = multi_depth_model(model)
        >>> probe.get_layer("predictions").input.shape
        (None, 4032)
    """
    if max_depths < 1:
        raise ConfigError(f"max_depths must be >= 1; received {max_depths!r}.")
    base, backbone = find_backbone(model)
    names, taps = _depth_taps(base, backbone, max_depths)
    depths = keras.Model(base.inputs, taps, name=BACKBONE_LAYER)
    images = keras.Input(shape=model.input_shape[1:], name="image")
    maps = depths(model.get_layer(PREPROCESS_LAYER)(images), training=False)
    maps = maps if isinstance(maps, list | tuple) else [maps]
    pooled = []
    side = int(model.input_shape[1])
    pixel_pool = max(1, math.ceil(side / PIXEL_SIDE))
    # Pixels in [0, 1], as deep features are within a few units: the concatenation is
    # one tensor, and int8 export quantizes it with one scale. On [0, 255] pixels every
    # deep feature fell within a step or two (LiteRT int8 agreed with Keras on 34 % of
    # the test images, benchmarks/export.py). The probe standardises each feature, so
    # the scale changes nothing else. float32: [0, 255] averages lose digits in bfloat16.
    x = keras.layers.Rescaling(1 / 255, dtype="float32", name=PIXELS_SCALE)(images)
    if pixel_pool > 1:
        x = keras.layers.AveragePooling2D(pixel_pool, dtype="float32", name="pixels_pool")(x)
    pooled.append(keras.layers.Flatten(dtype="float32", name="pixels_flat")(x))
    for name, tensor in zip(names, maps, strict=True):
        tag = name.replace("/", "_")
        pooled.append(keras.layers.GlobalAveragePooling2D(dtype="float32",
                                                          name=f"{tag}_avg")(tensor))
        height, width, channels = (int(d) for d in tensor.shape[1:])
        if min(height, width) >= 2 and 4 * channels <= SPATIAL_MAX_WIDTH:
            grid = keras.layers.AveragePooling2D((height // 2, width // 2), dtype="float32",
                                                 name=f"{tag}_2x2")(tensor)
            pooled.append(keras.layers.Flatten(dtype="float32", name=f"{tag}_2x2_flat")(grid))
    features = keras.layers.Concatenate(dtype="float32", name=DEPTHS_LAYER)(pooled)
    # The standardisation fit_probe sets (not folded into the kernel: see
    # kerastl.models.linear_probe._standardiser).
    features = keras.layers.Normalization(dtype="float32", name=STANDARDISE_LAYER)(features)
    units, activation = _output(model)
    outputs = keras.layers.Dense(units, activation=activation, dtype="float32",
                                 name=PREDICTIONS_LAYER)(features)
    probe = keras.Model(images, outputs, name=model.name)
    probe.kerastl_backbone = backbone  # carried, not looked up again
    for layer in depths.layers:  # a probe: the base never trains
        layer.trainable = False
    return probe


def fit_multi_depth_probe(probe: keras.Model, data: Any, *, task: str = "multiclass",
                          batch_size: int | None = None, seed: int = 0,
                          class_weight: str = "none", label_smoothing: float = 0.0,
                          ) -> dict[str, Any]:
    """Read the training images' features once and fit the probe's ``predictions``.

    Args:
        probe: keras.Model. From :func:`multi_depth_model`.
        data: ImageData. The training images (read in order, not augmented).
        task: str. ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        batch_size: int, optional. Images per forward pass; defaults to
            :func:`kerastl.models.features.extraction_batch_size`.
        seed: int. Seeds the draw of at most :data:`MAX_FIT_IMAGES` images, the folds
            and the solver.
        class_weight: str. ``"none"`` or ``"balanced"``.
        label_smoothing: float. As in :func:`kerastl.models.linear_probe.fit_probe`.

    Returns:
        What was fitted: ``C``, ``cv_accuracy`` (None when a class has too few images to
        cross-validate), ``train_accuracy``, ``temperature``, ``groups``, ``width``,
        ``fit_images``, ``extract_seconds``, ``fit_seconds``.
    """
    head = head_model(probe)
    rows = _fit_rows(len(data), seed)
    subset = data if rows is None else data.subset(rows)
    started = time.perf_counter()
    features, labels = read_depths(probe, subset, batch_size=batch_size)
    extract_seconds = time.perf_counter() - started
    started = time.perf_counter()
    facts = fit_probe(head, features, labels, task=task, class_weight=class_weight,
                      seed=seed, label_smoothing=label_smoothing)
    return {**facts, "groups": [{"name": n, "width": w} for n, w in feature_groups(probe)],
            "width": int(features.shape[1]), "fit_images": len(subset),
            "extract_seconds": round(extract_seconds, 3),
            "fit_seconds": round(time.perf_counter() - started, 3)}


def feature_groups(probe: keras.Model) -> list[tuple[str, int]]:
    """``(name, width)`` of each group of the probe's concatenated features, in order.

    Read from the graph (the pooling layer feeding each input of ``depths``), so a
    probe loaded from ``model.keras`` gives the same answer.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 3, input_shape=32, weights=None)
        >>> feature_groups(multi_depth_model(model))[:3]
        [('pixels', 768), ('block1/avg', 64), ('block1/2x2', 256)]
    """
    concatenate = probe.get_layer(DEPTHS_LAYER)
    inputs = concatenate.input if isinstance(concatenate.input, list) else [concatenate.input]
    groups = []
    for tensor in inputs:
        layer = tensor._keras_history.operation.name  # the pooling that made it
        for suffix, kind in (("_2x2_flat", "2x2"), ("_avg", "avg"), ("_flat", None)):
            if layer.endswith(suffix):
                name = layer[:-len(suffix)]
                groups.append((name if kind is None else f"{name}/{kind}",
                               int(tensor.shape[-1])))
                break
        else:
            groups.append((layer, int(tensor.shape[-1])))
    return groups


def multi_depth_probe(model: keras.Model, data: Any, *, task: str = "multiclass",
                      max_depths: int = MAX_DEPTHS, batch_size: int | None = None,
                      seed: int = 0, class_weight: str = "none",
                      ) -> tuple[keras.Model, dict[str, Any]]:
    """A frozen probe on every depth of ``model``'s base (Head2Toe), fitted on ``data``.

    :func:`multi_depth_model` then :func:`fit_multi_depth_probe`.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model` with the source weights.
        data: ImageData. The labelled training images.
        task, max_depths, batch_size, seed, class_weight: as in those functions.

    Returns:
        ``(probe model, facts)``.

    Example:
        >>> probe, facts = multi_depth_probe(model, data)  # doctest: +SKIP
        >>> probe.save("probe.keras")  # doctest: +SKIP
    """
    probe = multi_depth_model(model, max_depths=max_depths)
    facts = fit_multi_depth_probe(probe, data, task=task, batch_size=batch_size, seed=seed,
                                  class_weight=class_weight)
    return probe, facts


def read_depths(probe: keras.Model, data: Any, *, batch_size: int | None = None,
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The concatenated features (``depths`` layer) and labels of ``data``, float32.

    One compiled forward pass, as :func:`kerastl.models.features.extract_features`
    reads the last layer; ``data`` is anything that function reads.
    """
    return run_extractor(feature_extractor(probe), data, batch_size=batch_size)


def _depth_taps(base: keras.Model, backbone, max_depths: int) -> tuple[list[str], list]:
    """Names and output tensors of up to ``max_depths`` blocks (the last always)."""
    blocks = [(block.name, _block_output(block)) for block in backbone_blocks(base, backbone)]
    blocks = [(name, tensor) for name, tensor in blocks if tensor is not None]
    blocks[-1] = (blocks[-1][0], base.output)  # the base's own output, whatever ends it
    if len(blocks) > max_depths:
        keep = np.unique(np.round(np.linspace(len(blocks) - 1, 0, max_depths)).astype(int))
        blocks = [blocks[i] for i in sorted(keep)]
    return [name for name, _ in blocks], [tensor for _, tensor in blocks]


def _block_output(block) -> Any:
    """The block's last 4-D output (a feature map), or None (a block of 2-D layers)."""
    for layer in reversed(block.layers):
        if isinstance(layer, keras.layers.InputLayer):  # the pixels: their own group
            continue
        output = layer.output
        if not isinstance(output, list | tuple) and len(output.shape) == 4:
            return output
    return None


def _output(model: keras.Model) -> tuple[int, str]:
    try:
        dense = model.get_layer(PREDICTIONS_LAYER)
    except ValueError as error:
        raise ConfigError(f"Model {model.name!r} has no {PREDICTIONS_LAYER!r} layer; build it "
                          "with kerastl.build_model.") from error
    return int(dense.units), keras.activations.serialize(dense.activation)


def _fit_rows(n: int, seed: int) -> np.ndarray | None:
    if n <= MAX_FIT_IMAGES:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, MAX_FIT_IMAGES, replace=False))

"""Model builder: raw pixels → the backbone's own preprocessing → base → head.

Also the model surgery the rest of kerastl relies on: :func:`feature_extractor`
(pixels → preprocessing → base) and :func:`head_model` (base output → head), both
sharing the model's own layer objects.

The model takes raw pixels in ``[0, 255]`` and applies the backbone's
``preprocess_input`` inside the graph, as Keras built-in layers (never a ``Lambda``
or a custom class), so no caller can feed a ResNet ``rescale=1/255`` images by
mistake and the saved file loads with plain Keras. The
output layer computes in float32 whatever the global dtype policy, so a
``mixed_float16`` softmax never overflows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras  # noqa: E402
import numpy as np

from ..config.choices import HEAD_NORMS, HEADS, TASKS
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from .backbones import Backbone, as_backbone
from .freezing import (
    BACKBONE_LAYER,
    DEPTHS_LAYER,
    MODEL_PREFIX,
    PREPROCESS_LAYER,
    base_nodes,
    find_backbone,
    set_regime,
    validate_regime,
)
from .weights import build_base

# Keras Applications use BatchNorm momentum 0.99-0.999: after a few epochs from
# random init the moving statistics still sit near their initial values and the
# model evaluates near chance although it trains fine. 0.9 tracks the batch
# statistics within a few hundred steps.
SCRATCH_BN_MOMENTUM = 0.9


# The constants of keras.applications.imagenet_utils.preprocess_input.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


def preprocessing_layer(backbone: Backbone | str) -> keras.layers.Layer:
    """The backbone's own ``preprocess_input`` as one Keras built-in layer.

    Built-in layers only (no Lambda, no custom class), so a saved model loads with
    plain Keras and ``safe_mode=True`` in a process that never imported kerastl.
    The layer computes in float32 even under a mixed policy: ImageNet mean
    subtraction in float16/bfloat16 would lose most of a pixel's precision.

    * ``"caffe"`` (VGG, ResNet v1): RGB to BGR and minus the BGR mean, as one fixed
      1x1 ``Conv2D`` whose kernel is the channel permutation and whose bias is the
      negated mean. Each output is ``1 * x + 0 * y + 0 * z - mean``, exact in float32.
    * ``"tf"``: ``Rescaling(1 / 127.5, offset=-1)``.
    * ``"torch"`` (DenseNet): ``Normalization`` with the ImageNet mean and variance
      in pixel units (``x / 255 - mean) / std == (x - 255 mean) / (255 std)``).
    * ``"none"`` (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3, which
      normalise inside their own graph): ``Identity``.

    Args:
        backbone: Backbone or str. Its registry record or name.

    Returns:
        A non-trainable layer named ``"preprocess"``.

    Example:
        >>> import numpy as np
        >>> layer = preprocessing_layer("ResNet50")
        >>> np.asarray(layer(np.array([[[[255.0, 0.0, 0.0]]]]))).astype(float).round(3).tolist()
        [[[[-103.939, -116.779, 131.32]]]]
    """
    kind = as_backbone(backbone).preprocessing
    common = {"name": PREPROCESS_LAYER, "dtype": "float32", "trainable": False}
    if kind == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, **common)
    if kind == "torch":
        mean = [255.0 * m for m in TORCH_MEAN_RGB]
        variance = [(255.0 * s) ** 2 for s in TORCH_STD_RGB]
        return keras.layers.Normalization(mean=mean, variance=variance, **common)
    if kind == "caffe":
        layer = keras.layers.Conv2D(3, 1, **common)
        layer.build((None, None, None, 3))
        permutation = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        layer.set_weights([permutation, -np.asarray(CAFFE_MEAN_BGR, "float32")])
        return layer
    return keras.layers.Identity(**common)


def resolve_input_shape(backbone: Backbone | str, input_shape: Sequence[int] | int | None) -> tuple:
    """Validate ``input_shape`` (or a side length) against the backbone's limits."""
    entry = as_backbone(backbone)
    if input_shape is None:
        return (entry.default_size, entry.default_size, 3)
    if isinstance(input_shape, int):
        input_shape = (input_shape, input_shape, 3)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ConfigError(
            f"input_shape must be (height, width, 3); received input_shape={input_shape!r}. "
            "Grayscale images are converted to RGB by kerastl's data pipeline."
        )
    if min(shape[:2]) < entry.min_size:
        raise ConfigError(
            f"{entry.name} needs inputs of at least {entry.min_size}x{entry.min_size}; "
            f"received input_shape={shape}. Use image_size >= {entry.min_size}."
        )
    return shape


def build_model(
    backbone: Backbone | str,
    num_classes: int,
    *,
    input_shape: Sequence[int] | int | None = None,
    weights: str | os.PathLike | None = "imagenet",
    mode: str = "frozen",
    unfreeze_top: int | None = None,
    unfreeze_blocks: int | None = None,
    head: str = "flatten",
    dense_units: Sequence[int] = (256,),
    dropout: float = 0.0,
    task: str = "multiclass",
    bn_policy: str = "frozen",
    weights_hash: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    scratch_bn_momentum: float = SCRATCH_BN_MOMENTUM,
    head_norm: str = "none",
) -> keras.Model:
    """Build a transfer-learning model from a Keras Applications backbone.

    Args:
        backbone: Backbone or str. Registry record or name (see
            :func:`kerastl.list_backbones`).
        num_classes: int. Classes (``multiclass``/``multilabel``); 1 or 2 for
            ``binary``.
        input_shape: tuple or int, optional. ``(height, width, 3)`` or a side
            length. Defaults to the backbone's default size.
        weights: ``"imagenet"``, ``None`` or a path to no-top base weights.
            Ignored (random init) when ``mode="scratch"``. Defaults to
            ``"imagenet"``.
        mode: str. ``"frozen"``, ``"finetune"``, ``"full"`` or ``"scratch"``.
        unfreeze_top: int, optional. ``finetune``: train ``base.layers[-N:]``.
        unfreeze_blocks: int, optional. ``finetune``: train the top K blocks.
        head: str. ``"flatten"``, ``"avg"`` or ``"max"``. Defaults to ``"flatten"``.
        dense_units: sequence of int. Hidden Dense layers of the head.
        dropout: float. Dropout rate after pooling and after each hidden layer.
        task: str. ``"multiclass"`` (softmax), ``"binary"`` (one sigmoid unit) or
            ``"multilabel"`` (one sigmoid per class).
        bn_policy: str. ``"frozen"``: base BatchNorm layers always run in inference
            mode with pretrained statistics (the base is called with
            ``training=False``). ``"train"``: unfrozen BatchNorm layers train.
            ``mode="scratch"`` implies ``"train"``.
        weights_hash: str, optional. Expected SHA-256 of a weights file.
        backbone_kwargs: dict, optional. Extra constructor arguments, e.g.
            ``{"alpha": 0.35}`` for MobileNetV2.
        scratch_bn_momentum: float. BatchNorm momentum used in ``scratch`` mode.
        head_norm: str. Normalise pooled features before the head's Dense layers:
            ``"none"`` (default, the classic recipe), ``"layer"``
            (LayerNormalization: no moving statistics to lag behind) or ``"batch"``
            (BatchNormalization, momentum 0.9). Pretrained features are often small
            (mean |x| ~0.1 for MobileNetV3), which makes an unnormalised linear head
            learn slowly; kerastl's training defaults use ``"layer"``.

    Returns:
        A functional ``keras.Model`` named ``kerastl_<backbone>``. Its
        ``plan`` attribute holds the :class:`~kerastl.models.freezing.UnfreezePlan`.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("MobileNetV2", 5, input_shape=(32, 32, 3),
        ...                             weights=None, head="avg", dense_units=())
        >>> model.output.shape, model.output.dtype
        ((None, 5), 'float32')
    """
    entry = as_backbone(backbone)
    shape = resolve_input_shape(entry, input_shape)
    validate_regime(mode, unfreeze_top, unfreeze_blocks, bn_policy)
    _validate_head(num_classes, head, dense_units, dropout, task)
    if head_norm not in HEAD_NORMS:
        raise ConfigError(f"head_norm must be one of {HEAD_NORMS}; received {head_norm!r}.")
    if mode == "scratch":
        weights, bn_policy = None, "train"

    base = build_base(entry, shape, weights, weights_hash=weights_hash,
                      **(backbone_kwargs or {}))
    # Renamed after construction: EfficientNetV2 looks its block table up by `name`.
    base.name = BACKBONE_LAYER
    if mode == "scratch":
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = scratch_bn_momentum

    images = keras.Input(shape=shape, name="image")
    x = preprocessing_layer(entry)(images)
    # With frozen BatchNorm the base always runs in inference mode, as the Keras
    # transfer-learning guide prescribes: BatchNorm keeps its statistics and any
    # dropout inside the base (EfficientNet drop-connect) stays off while frozen.
    x = base(x, training=False if bn_policy == "frozen" else None)
    outputs = _head(x, num_classes, head, dense_units, dropout, task, head_norm)
    model = keras.Model(images, outputs, name=f"{MODEL_PREFIX}{entry.name.lower()}")
    model.kerastl_backbone = entry  # carried, so the registry is not searched again
    model.plan = set_regime(
        model, mode, unfreeze_top=unfreeze_top, unfreeze_blocks=unfreeze_blocks,
        bn_policy=bn_policy, recompile=False,
    )
    return model


def _validate_head(num_classes, head, dense_units, dropout, task) -> None:
    if head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}; received head={head!r}.")
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}; received task={task!r}.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int; received {num_classes!r}.")
    if task == "multiclass" and num_classes < 2:
        raise ConfigError(
            f"task='multiclass' needs num_classes >= 2; received {num_classes}. "
            "Use task='binary' for two classes with one sigmoid unit."
        )
    if task == "binary" and num_classes not in (1, 2):
        raise ConfigError(f"task='binary' needs num_classes of 1 or 2; received {num_classes}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1); received dropout={dropout!r}.")
    if any(int(u) < 1 for u in dense_units):
        raise ConfigError(f"dense_units must be positive; received {tuple(dense_units)!r}.")


def _head(x, num_classes, head, dense_units, dropout, task, head_norm="none"):
    pool = {
        "flatten": keras.layers.Flatten,
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
    }[head]
    x = pool(name=f"head_{head}")(x)
    if head_norm == "layer":
        x = keras.layers.LayerNormalization(name="head_norm")(x)
    elif head_norm == "batch":
        x = keras.layers.BatchNormalization(momentum=0.9, name="head_norm")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout_0")(x)
    for i, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(int(units), activation="relu", name=f"head_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
    units, activation = {
        "multiclass": (num_classes, "softmax"),
        "binary": (1, "sigmoid"),
        "multilabel": (num_classes, "sigmoid"),
    }[task]
    return keras.layers.Dense(
        units, activation=activation, dtype="float32", name="predictions"
    )(x)


def load_model(path: str | os.PathLike, **kwargs: Any) -> keras.Model:
    """Load a ``.keras`` model saved by kerastl, always with ``safe_mode=True``.

    Args:
        path: path to a ``.keras`` file.
        **kwargs: passed to ``keras.models.load_model`` (``compile=False``...).

    Example:
        >>> import kerastl, tempfile, os
        >>> m = kerastl.build_model("VGG16", 2, input_shape=32, weights=None,
        ...                         dense_units=())
        >>> p = os.path.join(tempfile.mkdtemp(), "m.keras"); m.save(p)
        >>> kerastl.load_model(p).name
        'kerastl_vgg16'
    """
    if kwargs.pop("safe_mode", True) is not True:
        raise ConfigError("kerastl.load_model always uses safe_mode=True.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {path!r}.")
    return keras.models.load_model(path, safe_mode=True, **kwargs)


# ---------------------------------------------------------------------------- surgery
POOLINGS = (None, "avg", "max")


def feature_extractor(model: keras.Model, *, pooling: str | None = None) -> keras.Model:
    """Raw pixels → the model's preprocessing → its base, in inference mode.

    The extractor calls the very ``preprocess`` and ``backbone`` layer objects of
    ``model``, so it always computes the features the full model's head sees.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        pooling: str, optional. ``"avg"`` or ``"max"`` pools the base output to one
            vector per image; ``None`` keeps the feature map. Defaults to None.

    Returns:
        A functional model named ``<model name>_features``.

    Example:
        >>> import kerastl
        >>> from kerastl.models.build import feature_extractor
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> feature_extractor(model, pooling="avg").output.shape
        (None, 512)
    """
    _check_pooling(pooling)
    base, _ = find_backbone(model)
    if DEPTHS_LAYER in {layer.name for layer in model.layers}:
        return _depths_reader(model, pooling)
    images = keras.Input(shape=model.input_shape[1:], name="image")
    x = model.get_layer(PREPROCESS_LAYER)(images)
    # Inference mode whatever the model's bn_policy: cached features must not
    # depend on BatchNorm batch statistics or on dropout inside the base.
    x = base(x, training=False)
    if pooling is not None:
        pool = {"avg": keras.layers.GlobalAveragePooling2D,
                "max": keras.layers.GlobalMaxPooling2D}[pooling]
        x = pool(name=f"features_{pooling}")(x)
    return keras.Model(images, x, name=f"{model.name}_features")


def _depths_reader(model: keras.Model, pooling: str | None) -> keras.Model:
    """A multi-depth probe's features: what its head reads (already pooled)."""
    if pooling is not None:
        raise ConfigError(f"Model {model.name!r} reads every depth of its base, already "
                          f"pooled; received pooling={pooling!r}. Pass pooling=None.")
    return keras.Model(model.inputs[0], model.get_layer(DEPTHS_LAYER).output,
                       name=f"{model.name}_features")


def head_model(model: keras.Model) -> keras.Model:
    """Base output → the model's head layers → predictions, sharing the layers.

    The head model reuses the layer instances of ``model`` (not copies), so fitting
    it on cached features updates the weights of the end-to-end model.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.

    Returns:
        A functional model whose input has the base's output shape.

    Example:
        >>> import kerastl
        >>> from kerastl.models.build import head_model
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> head = head_model(model)
        >>> head.input_shape, head.layers[-1] is model.get_layer("predictions")
        ((None, 1, 1, 512), True)
    """
    find_backbone(model)
    nodes = base_nodes(model)
    if len(nodes) != 1:
        raise ConfigError(
            f"Model {model.name!r} calls its '{BACKBONE_LAYER}' layer {len(nodes)} times; "
            "head_model needs a model built by kerastl.build_model, which calls it once."
        )
    # Keras clones the graph from an intermediate tensor onwards with a new Input
    # and the same layer objects.
    if DEPTHS_LAYER in {layer.name for layer in model.layers}:
        depths = model.get_layer(DEPTHS_LAYER)
        head = keras.Model(depths.output, model.outputs, name=f"{model.name}_head")
        # The groups the probe standardises one by one (see fit_probe).
        head.kerastl_widths = [int(t.shape[-1]) for t in depths.input]
        return head
    return keras.Model(nodes[0].output_tensors[0], model.outputs, name=f"{model.name}_head")


# ------------------------------------------------------------------------ extraction
def _check_pooling(pooling: str | None) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}; received pooling={pooling!r}.")

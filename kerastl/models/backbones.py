"""The backbone registry: everything kerastl knows about each Keras Applications model.

One frozen :class:`Backbone` record per architecture (as timm's ``PretrainedCfg`` or
fastai's ``model_meta``): its constructor, its own ``preprocess_input``, default and
minimum input size, feature width, and how its layers group into blocks for
unfreezing. Nothing else in kerastl hard-codes a layer name.

Blocks are described by regular expressions over layer names whose first group is
the block label (timm's ``group_matcher`` idea). Layers no pattern matches belong to
the block before them; :func:`kerastl.models.freezing.backbone_blocks` then moves each block
boundary back to a point of the graph where no residual/shortcut branch crosses it,
so a block is never split in half.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import keras  # noqa: E402  (after the backend is pinned)

from ..core import backend as _backend  # noqa: F401  (pins the TensorFlow backend)
from ..core.errors import UnknownBackboneError

apps = keras.applications


@dataclass(frozen=True)
class Backbone:
    """What kerastl knows about one Keras Applications architecture.

    Attributes:
        name: str. Registry name, the Keras Applications function name
            (``"ResNet50"``).
        family: str. Keras Applications module (``"resnet"``), for grouping in docs.
        constructor: callable. The Keras Applications function.
        preprocess_input: callable. The backbone's own preprocessing, applied to raw
            pixels in ``[0, 255]``. Identity for models that preprocess internally
            (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
        preprocessing: str. What ``preprocess_input`` computes, which
            :func:`kerastl.models.build.preprocessing_layer` rebuilds from Keras built-in
            layers: ``"caffe"`` (RGB to BGR, minus the ImageNet BGR mean),
            ``"tf"`` (scale to ``[-1, 1]``), ``"torch"`` (scale to ``[0, 1]``, then
            the ImageNet mean and standard deviation) or ``"none"``.
        default_size: int. Input size the ImageNet weights were trained at.
        min_size: int. Smallest input side the architecture accepts.
        feature_width: int. Channels of the base output (``include_top=False``).
        block_patterns: tuple of str. Regexes over layer names; group 1 is the block
            label. Blocks are residual blocks / cells / stages, top to bottom.
        max_crossing: int. How many tensors may cross a block boundary. 1 for
            sequential and residual networks; 2 for NASNet, whose cells read the
            outputs of the two previous cells.
    """

    name: str
    family: str
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable[[Any], Any]
    preprocessing: str
    default_size: int
    min_size: int
    feature_width: int
    block_patterns: tuple[str, ...]
    max_crossing: int = 1
    extra_kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:  # messages name the backbone, whatever carried it
        return self.name

    def build_base(
        self, input_shape: tuple[int, int, int], weights: str | None, **kwargs: Any
    ) -> keras.Model:
        """Build the base network without its classification top.

        Args:
            input_shape: tuple. ``(height, width, channels)``.
            weights: ``"imagenet"``, ``None`` or a path. See
                :func:`kerastl.models.weights.build_base` for friendly errors.
            **kwargs: extra constructor arguments (e.g. ``alpha=0.35``).

        Returns:
            The Keras Applications model with ``include_top=False``.
        """
        return self.constructor(
            include_top=False,
            weights=weights,
            input_shape=input_shape,
            **{**self.extra_kwargs, **kwargs},
        )


def _identity(x: Any) -> Any:
    """Preprocessing for models that normalise inside their own graph."""
    return x


PREPROCESSING = ("caffe", "tf", "torch", "none")


def _entry(name: str, module: str, preprocessing: str, **fields: Any) -> Backbone:
    """A record; ``preprocessing="none"`` means the model normalises its own inputs."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING}; got {preprocessing!r}")
    family_module = getattr(apps, module)
    return Backbone(
        name=name,
        family=module,
        constructor=getattr(apps, name),
        preprocess_input=(_identity if preprocessing == "none"
                          else family_module.preprocess_input),
        preprocessing=preprocessing,
        **fields,
    )


_VGG = (r"^(block\d+)_",)
_RESNET = (r"^(conv\d_block\d+)_",)
_DENSENET = (r"^(conv\d_block\d+)_", r"^(pool\d)_")
_EFFICIENTNET = (r"^(block\d+[a-z])_", r"^(top)_")
_EFFICIENTNET_V2 = _EFFICIENTNET  # same layer names
_MOBILENET = (r"^conv_(?:dw|pw)_(\d+)",)
_MOBILENET_V2 = (r"^(block_\d+)_", r"^(expanded_conv)_", r"^(Conv_1)")
_MOBILENET_V3 = (r"^(expanded_conv(?:_\d+)?)_", r"^(conv_1)")
_INCEPTION_V3 = (r"^(mixed\d+)$",)
_INCEPTION_RESNET_V2 = (r"^(mixed_\w+?)(?:_|$)", r"^(block(?:35|17|8)_\d+)", r"^(conv_7b)")
_XCEPTION = (r"^(block\d+)_",)
_NASNET = (r"_(reduce_\d+)$", r"^(?:normal|adjust)_\w+?_(\d+)$")
_CONVNEXT = (r"_(stage_\d+_block_\d+)_", r"_(downsampling_block_\d+)")

_ENTRIES: list[Backbone] = [
    _entry("VGG16", "vgg16", "caffe", default_size=224, min_size=32, feature_width=512,
           block_patterns=_VGG),
    _entry("VGG19", "vgg19", "caffe", default_size=224, min_size=32, feature_width=512,
           block_patterns=_VGG),
    *[
        _entry(n, "resnet", "caffe", default_size=224, min_size=32, feature_width=2048,
               block_patterns=_RESNET)
        for n in ("ResNet50", "ResNet101", "ResNet152")
    ],
    *[
        _entry(n, "resnet_v2", "tf", default_size=224, min_size=32, feature_width=2048,
               block_patterns=_RESNET)
        for n in ("ResNet50V2", "ResNet101V2", "ResNet152V2")
    ],
    _entry("Xception", "xception", "tf", default_size=299, min_size=71, feature_width=2048,
           block_patterns=_XCEPTION),
    _entry("InceptionV3", "inception_v3", "tf", default_size=299, min_size=75,
           feature_width=2048, block_patterns=_INCEPTION_V3),
    _entry("InceptionResNetV2", "inception_resnet_v2", "tf", default_size=299, min_size=75,
           feature_width=1536, block_patterns=_INCEPTION_RESNET_V2),
    _entry("MobileNet", "mobilenet", "tf", default_size=224, min_size=32, feature_width=1024,
           block_patterns=_MOBILENET),
    _entry("MobileNetV2", "mobilenet_v2", "tf", default_size=224, min_size=32,
           feature_width=1280, block_patterns=_MOBILENET_V2),
    _entry("MobileNetV3Small", "mobilenet_v3", "none", default_size=224, min_size=32,
           feature_width=576, block_patterns=_MOBILENET_V3),
    _entry("MobileNetV3Large", "mobilenet_v3", "none", default_size=224, min_size=32,
           feature_width=960, block_patterns=_MOBILENET_V3),
    *[
        _entry(n, "densenet", "torch", default_size=224, min_size=32, feature_width=w,
               block_patterns=_DENSENET)
        for n, w in (("DenseNet121", 1024), ("DenseNet169", 1664), ("DenseNet201", 1920))
    ],
    _entry("NASNetMobile", "nasnet", "tf", default_size=224, min_size=32, feature_width=1056,
           block_patterns=_NASNET, max_crossing=2),
    _entry("NASNetLarge", "nasnet", "tf", default_size=331, min_size=32, feature_width=4032,
           block_patterns=_NASNET, max_crossing=2),
    *[
        _entry(f"EfficientNetB{i}", "efficientnet", "none", default_size=s, min_size=32,
               feature_width=w, block_patterns=_EFFICIENTNET)
        for i, (s, w) in enumerate(
            [(224, 1280), (240, 1280), (260, 1408), (300, 1536),
             (380, 1792), (456, 2048), (528, 2304), (600, 2560)]
        )
    ],
    *[
        _entry(f"EfficientNetV2{v}", "efficientnet_v2", "none", default_size=s, min_size=32,
               feature_width=w, block_patterns=_EFFICIENTNET_V2)
        for v, s, w in [("B0", 224, 1280), ("B1", 240, 1280), ("B2", 260, 1408),
                        ("B3", 300, 1536), ("S", 384, 1280), ("M", 480, 1280),
                        ("L", 480, 1280)]
    ],
    *[
        _entry(f"ConvNeXt{v}", "convnext", "none", default_size=224, min_size=32,
               feature_width=w, block_patterns=_CONVNEXT)
        for v, w in [("Tiny", 768), ("Small", 768), ("Base", 1024), ("Large", 1536),
                     ("XLarge", 2048)]
    ],
]

REGISTRY: dict[str, Backbone] = {entry.name: entry for entry in _ENTRIES}


def list_backbones() -> list[str]:
    """Names of every registered backbone, in registry order.

    Example:
        >>> import kerastl
        >>> "ResNet50" in kerastl.list_backbones()
        True
    """
    return list(REGISTRY)


def as_backbone(backbone: Backbone | str) -> Backbone:
    """The registry record: ``backbone`` itself, or the record its name looks up.

    A resolved run carries its :class:`Backbone` record from
    :func:`kerastl.recipes.resolve.resolve_run` down to the model, so the registry is
    searched once per run; names (from a user, or a model file) are looked up.

    Example:
        >>> as_backbone("vgg16") is as_backbone(as_backbone("vgg16"))
        True
    """
    return backbone if isinstance(backbone, Backbone) else get_backbone(backbone)


def registry_key(name: str) -> str:
    """How names are compared: case, ``-`` and ``_`` do not count.

    Example:
        >>> registry_key("Mobile-Net_V2") == registry_key("mobilenetv2")
        True
    """
    return str(name).lower().replace("-", "").replace("_", "")


def get_backbone(name: str) -> Backbone:
    """Look up a backbone by name, case-insensitively.

    Args:
        name: str. A registry name such as ``"MobileNetV2"`` or ``"resnet50"``.

    Returns:
        The :class:`Backbone` record.

    Raises:
        UnknownBackboneError: the name is not registered; the message lists the
            closest registered names.

    Example:
        >>> from kerastl.models.backbones import get_backbone
        >>> get_backbone("vgg16").default_size
        224
    """
    if isinstance(name, Backbone):
        return name
    by_lower = {key.lower(): entry for key, entry in REGISTRY.items()}
    key = registry_key(name)
    if key in by_lower:
        return by_lower[key]
    close = difflib.get_close_matches(key, list(by_lower), n=3, cutoff=0.5)
    suggestions = ", ".join(by_lower[c].name for c in close) or "none close"
    raise UnknownBackboneError(
        f"Unknown backbone {name!r}. Closest registered names: {suggestions}. "
        "See kerastl.list_backbones() for all of them."
    )

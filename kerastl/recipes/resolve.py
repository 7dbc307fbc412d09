"""Resolve a run's configuration once: every derived default filled in, then validated.

What the user gave (a :class:`~kerastl.config.schema.RunConfig` from flags, YAML or a
notebook) still has holes that depend on other values and on files: no data means the
shipped samples, no backbone means the one a weights file was saved from, no image
size means the size those weights were trained at. :func:`resolve_config` fills them
in one place; :func:`kerastl.fit`, :func:`kerastl.compare` and every command use what
it returns, and ``config.yaml`` records it.

Example:
    >>> from kerastl.config.schema import RunConfig
    >>> config = resolve_config(RunConfig(backbone="mobilenetv2", image_size=32, data="x"))
    >>> config.backbone, config.image_size
    ('MobileNetV2', 32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.phases import Phase
from ..config.schema import DEFAULT_BACKBONE, RunConfig, csv_list, validate
from ..data.images import native_image_side_of
from ..data.samples import apply_sample_defaults
from ..data.sources import native_image_side
from ..data.splits import DataSplits
from ..models.backbones import Backbone, get_backbone
from ..models.weights import has_pretrained_weights, weights_record


def resolve_config(config: RunConfig, *, in_memory_data: bool = False,
                   native_size: Callable[[RunConfig], int | None] | None = None
                   ) -> RunConfig:
    """A validated copy of ``config`` with every derived default filled in.

    * no ``data`` (and ``in_memory_data`` False): the shipped ``data_samples/``
      and their source backbone;
    * ``weights`` ``"none"``/``None`` are the same; ``mode="scratch"`` means
      random initialisation;
    * no ``backbone``: the one a weights file was saved from (its kerastl
      ``config.yaml`` or JSON record), else ``MobileNetV2``; names in any case;
    * no ``image_size``: the size those weights were trained at, else the
      backbone's default size; with ``mode="auto"`` and no pretrained weights
      (trained from scratch), the images' own side from ``native_size(config)``,
      within the backbone's minimum and default sizes.

    Args:
        config: RunConfig. What the user gave; it is not changed.
        in_memory_data: bool. The data comes as arrays (no ``data`` folder).
        native_size: callable, optional. Returns the images' own side; only
            called when a from-scratch run needs it (it reads file headers).

    Returns:
        A new :class:`RunConfig`, with the same ``given`` fields.

    Raises:
        ConfigError: a value outside its choices or range, quoting it.
    """
    resolved = config.replace()
    resolved.given = config.given
    resolved.weights = _none_weights(resolved.weights)
    if resolved.data is None and not in_memory_data:
        apply_sample_defaults(resolved)
    backbone = _backbone_of(resolved)
    resolved.backbone = backbone.name
    if resolved.image_size is None:
        resolved.image_size = _default_image_size(resolved, backbone, native_size)
    if resolved.mode == "scratch" and resolved.phases is None:
        resolved.weights = None  # scratch means random initialisation
    # A list, whatever wrote it: YAML `augment: auto` or `augment:` (null) included.
    if resolved.augment is None or isinstance(resolved.augment, str):
        resolved.augment = csv_list(resolved.augment or "")
    if resolved.mode == "frozen" and "augment" not in resolved.given:
        # A frozen base computes the same features every epoch unless augmentation
        # runs before it: without it they are computed once and cached.
        resolved.augment = []
    if resolved.phases is not None:
        resolved.phases = [p if isinstance(p, Phase) else Phase(**p)
                           for p in resolved.phases]
    validate(resolved)
    return resolved


def _backbone_of(config: RunConfig) -> Backbone:
    """The registry record of the run's backbone; a weights file's record fills gaps."""
    given = get_backbone(config.backbone) if config.backbone else None
    record = weights_record(config.weights)
    if record is not None:
        saved = get_backbone(record["backbone"])
        if given is None or given.name == saved.name:
            if "backbone_kwargs" not in config.given:
                config.backbone_kwargs = dict(record.get("backbone_kwargs") or {})
            if config.image_size is None and record.get("input_size"):
                config.image_size = int(record["input_size"])
            return saved
    return given or get_backbone(DEFAULT_BACKBONE)


def _none_weights(weights: Any) -> Any:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    return str(weights)


def _default_image_size(config: RunConfig, backbone: Backbone,
                        native_size: Callable[[RunConfig], int | None] | None) -> int:
    from_scratch = (config.mode == "auto" and config.phases is None
                    and not has_pretrained_weights(config.weights))
    own = native_size(config) if from_scratch and native_size is not None else None
    if not own:
        return backbone.default_size
    # Nothing was trained at a size: the images' own, within what the net accepts.
    return min(max(int(own), backbone.min_size), backbone.default_size)


def native_size(config: RunConfig, splits: DataSplits | None) -> int | None:
    """The training images' own side (file headers, or the arrays' shape), or None."""
    if splits is not None:
        images = splits.train.images
        if images is not None:
            return int(min(images.shape[1:3]))
        return native_image_side_of(splits.train.files or [])
    return native_image_side(config.data) if config.data else None

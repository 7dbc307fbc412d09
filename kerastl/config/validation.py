"""Checks of every :class:`RunConfig` value against its choices and range.

Kept apart from the schema (what the options are) because the checks grow with the
options' interactions; :func:`kerastl.recipes.resolve.resolve_run` calls
:func:`validate` once, on the resolved config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..core.errors import ConfigError, check_int, parse_size
from .choices import AUGMENTATIONS, AUTO
from .schema import RunConfig


def validate(config: RunConfig) -> None:
    """Check every value of ``config`` against its choices and range, quoting it.

    Raises:
        ConfigError: the first value that is out of its choices or range.

    Example:
        >>> validate(RunConfig(batch_size=0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kerastl.core.errors.ConfigError: batch_size must be a positive integer; received ...
    """
    for spec in dataclasses.fields(RunConfig):
        choices = spec.metadata.get("choices")
        value = getattr(config, spec.name)
        if choices is None or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v not in choices]
        if bad:
            raise ConfigError(f"{spec.name} must be one of {list(choices)}; received "
                              f"{spec.name}={value!r}.")
    if config.pixel_blend == "on" and config.sklearn_head:
        raise ConfigError(f"pixel_blend='on' blends a Keras network's logits; a scikit-learn "
                          f"head (head={config.head!r}) has none. Use --head avg or "
                          "--pixel-blend off.")
    if config.multi_depth:
        _check_multi_depth(config)
    check_int("batch_size", config.batch_size)
    check_int("image_size", config.image_size)
    check_int("seed", config.seed, minimum=0)
    check_int("augment_passes", config.augment_passes)
    if config.decoded_memory != AUTO:
        parse_size("decoded_memory", str(config.decoded_memory))  # refuses what is not a size
    if AUTO in config.augment and len(config.augment) > 1:
        raise ConfigError(f"augment 'auto' chooses the augmentations itself, so it stands alone; "
                          f"received augment={config.augment!r}. Pass 'auto' or a list of "
                          f"{list(AUGMENTATIONS)}.")
    if config.epochs != AUTO:
        check_int("epochs", config.epochs)
    if config.intra_op_threads != AUTO:
        check_int("intra_op_threads", config.intra_op_threads)
    for name in ("unfreeze_top", "unfreeze_blocks", "head_epochs", "early_stopping",
                 "steps_per_execution"):
        if getattr(config, name) is not None:
            check_int(name, getattr(config, name))
    if config.lr != AUTO:
        _number("lr", config.lr, low=0.0, low_open=True)
    _number("finetune_lr_factor", config.finetune_lr_factor, low=0.0, low_open=True)
    if config.val_split != AUTO:
        _number("val_split", config.val_split, low=0.0, high=1.0, high_open=True)
    _number("warmup_fraction", config.warmup_fraction, low=0.0, high=1.0, high_open=True)
    _number("label_smoothing", config.label_smoothing, low=0.0, high=1.0, high_open=True)
    _number("dropout", config.dropout, low=0.0, high=1.0, high_open=True)
    _number("weight_decay", config.weight_decay, low=0.0)
    _number("momentum", config.momentum, low=0.0, high=1.0, high_open=True)
    _number("block_lr_decay", config.block_lr_decay, low=0.0, high=1.0, low_open=True)
    _number("anchor_decay", config.anchor_decay, low=0.0)
    _number("checkpoint_interval", config.checkpoint_interval, low=0.0)
    if config.prune is not None:
        _number("prune", config.prune, low=0.0, high=1.0, low_open=True, high_open=True)
        modes = [p.mode for p in config.phases] if config.phases else [config.mode]
        if config.sklearn_head or all(mode == "frozen" for mode in modes):
            raise ConfigError(
                f"prune={config.prune} prunes a phase that trains the base, and this run has "
                f"none (head={config.head!r}, mode {modes}); use mode auto, finetune, full or "
                "scratch with a Keras head.")
    if config.resume and config.output is None:
        raise ConfigError("--resume needs --output DIR: the run to continue.")
    if not isinstance(config.backbone_kwargs, dict):
        raise ConfigError(f"backbone_kwargs must be a mapping; received "
                          f"{config.backbone_kwargs!r}.")
    for phase in config.phases or []:
        check_int(f"epochs of phase {phase.name!r}", phase.epochs)


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lower = "-inf" if low is None else f"{low:g}"
        upper = "inf" if high is None else f"{high:g}"
        span = f"{left}{lower}, {upper}{right}"
        raise ConfigError(f"{name} must be a number in {span}; received {name}={value!r}.")


def _check_multi_depth(config: RunConfig) -> None:
    """``head="multidepth"``: one linear layer on every depth, fitted as a probe first.

    ``mode="frozen"`` keeps the probe; ``auto`` (or ``full``/``finetune`` with
    ``head_warmup="probe"``) fine-tunes the network from it. A head warmed up by
    gradient steps would start from raw pixels and unstandardised features.
    """
    if config.phases and not _probe_first(config.phases):
        # Phases that start with its probe (the run's own plan, as config.yaml records
        # it for --resume) are fine; any other start would train the head by gradient.
        raise ConfigError(f"head='multidepth' starts from its linear probe: phases must "
                          f"begin with a phase of fit='probe' and keep BatchNorm frozen; "
                          f"received phases {[p.name for p in config.phases]!r}. Drop "
                          "phases: mode 'auto' plans the probe, then fine-tuning.")
    if config.mode in ("full", "finetune") and config.head_warmup != "probe":
        raise ConfigError(f"head='multidepth' starts from its linear probe; with "
                          f"mode={config.mode!r} that needs head_warmup='probe'; received "
                          f"head_warmup={config.head_warmup!r}. Use --head-warmup probe, or "
                          "--mode auto.")
    if config.mode == "scratch":
        raise ConfigError(f"head='multidepth' starts from a linear probe on a pretrained "
                          f"base; it needs mode 'frozen' (the probe alone) or 'auto' (the "
                          f"probe, then fine-tuning); received mode={config.mode!r}. Use "
                          "--mode frozen or --mode auto.")
    if config.bn_policy != "frozen":
        raise ConfigError(f"head='multidepth' runs its base with BatchNorm in inference "
                          f"mode; received bn_policy={config.bn_policy!r}. Use --bn-policy "
                          "frozen.")
    if config.dense_units:
        raise ConfigError(f"head='multidepth' is one linear layer; received dense_units="
                          f"{list(config.dense_units)!r}. Use --dense-units none.")


def _probe_first(phases: list) -> bool:
    """Whether ``phases`` open with a linear-probe phase and never train BatchNorm or
    start from scratch: what the multi-depth head's own plan is."""
    return (phases[0].fit == "probe"
            and all(p.bn_policy == "frozen" and p.mode != "scratch" for p in phases))

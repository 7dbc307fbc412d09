"""What a run is: one dataclass that the CLI, YAML files and notebooks all produce.

The resolved :class:`RunConfig` is written next to the outputs as ``config.yaml``,
and ``python -m kerastl.train --config that.yaml`` reproduces the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
CLASS_WEIGHTS = ("none", "balanced")
ON_BAD_FILE = ("error", "skip")
FEATURE_CACHE = ("auto", "off")


@dataclass
class Phase:
    """One stage of a run: a regime, a number of epochs and a learning rate.

    Each phase sets the regime with :func:`kerastl.set_regime` and builds a fresh
    optimizer and train step, so trainable flags are never stale.

    Args:
        name: str. Shown in logs, ``history.csv`` and ``curves.png``.
        epochs: int. Epochs in this phase.
        mode: str. ``"frozen"``, ``"finetune"``, ``"full"`` or ``"scratch"``.
        unfreeze_top: int, optional. Fine-tune the top N layers.
        unfreeze_blocks: int, optional. Fine-tune the top K registry blocks.
        lr: float, optional. Peak learning rate; defaults to the run's ``lr`` times
            ``finetune_lr_factor`` for phases that unfreeze the base.
        bn_policy: str. ``"frozen"`` or ``"train"``.

    Example:
        >>> Phase("finetune", 3, mode="finetune", unfreeze_blocks=2, lr=1e-4).epochs
        3
    """

    name: str
    epochs: int
    mode: str = "frozen"
    unfreeze_top: int | None = None
    unfreeze_blocks: int | None = None
    lr: float | None = None
    bn_policy: str = "frozen"


@dataclass
class RunConfig:
    """Everything a training run needs, grouped as the CLI groups its flags."""

    # data
    data: str | None = None
    val_data: str | None = None
    test_data: str | None = None
    val_split: float = 0.2
    image_size: int | None = None
    batch_size: int = 32
    augment: list[str] = field(default_factory=lambda: ["flip", "translate"])
    on_bad_file: str = "error"
    # model
    backbone: str | None = None  # None: the shipped source backbone, else MobileNetV2
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = "imagenet"
    weights_hash: str | None = None
    head: str = "avg"
    dense_units: list[int] = field(default_factory=list)
    dropout: float = 0.2
    head_norm: str = "layer"
    task: str = "multiclass"
    # regime
    mode: str = "full"
    unfreeze_top: int | None = None
    unfreeze_blocks: int | None = None
    bn_policy: str = "frozen"
    head_epochs: int | None = None
    phases: list[Phase] | None = None
    # optimisation
    epochs: int = 10
    lr: float = 1e-2
    finetune_lr_factor: float = 0.1
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    label_smoothing: float = 0.1
    class_weight: str = "none"
    early_stopping: int | None = None
    # compression: magnitude pruning of the last phase that trains the base
    prune: float | None = None
    # runtime
    strategy: str = "auto"
    precision: str = "auto"
    seed: int = 0
    jit_compile: str = "auto"
    steps_per_execution: int | None = None
    feature_cache: str = "auto"
    feature_cache_dir: str | None = None
    # output
    output: str = "runs/latest"
    resume: bool = False
    verbose: int = 1

    def resolved_phases(self) -> list[Phase]:
        """The phases to run: ``phases`` if given, else derived from ``mode``.

        ``finetune``/``full`` warm the new head up with the base frozen first (a
        randomly initialised head sends large gradients into a pretrained base),
        then unfreeze at ``lr * finetune_lr_factor``.
        """
        if self.phases:
            return [p if isinstance(p, Phase) else Phase(**p) for p in self.phases]
        if self.mode in ("frozen", "scratch"):
            return [Phase(self.mode, self.epochs, mode=self.mode, lr=self.lr,
                          bn_policy="train" if self.mode == "scratch" else self.bn_policy)]
        head = self.head_epochs if self.head_epochs is not None else max(1, self.epochs // 3)
        if not 0 < head < self.epochs:
            raise ConfigError(
                f"mode={self.mode!r} runs a head warm-up then a {self.mode} phase, so it needs "
                f"0 < head_epochs < epochs; received head_epochs={head}, epochs={self.epochs}."
            )
        unfreeze = {}
        if self.mode == "finetune":
            if self.unfreeze_top is None and self.unfreeze_blocks is None:
                unfreeze = {"unfreeze_blocks": 2}
            else:
                unfreeze = {"unfreeze_top": self.unfreeze_top,
                            "unfreeze_blocks": self.unfreeze_blocks}
        return [
            Phase("head", head, mode="frozen", lr=self.lr, bn_policy=self.bn_policy),
            Phase(self.mode, self.epochs - head, mode=self.mode,
                  lr=self.lr * self.finetune_lr_factor, bn_policy=self.bn_policy, **unfreeze),
        ]

    def validate(self) -> RunConfig:
        """Refuse bad values with a one-line reason quoting them."""
        if self.backbone is not None:
            from .backbones import get_backbone

            self.backbone = get_backbone(self.backbone).name
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _choice("on_bad_file", self.on_bad_file, ON_BAD_FILE)
        _choice("feature_cache", self.feature_cache, FEATURE_CACHE)
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        if self.image_size is not None:
            _positive("image_size", self.image_size)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; received lr={self.lr!r}.")
        if not 0.0 < self.val_split < 1.0:
            raise ConfigError(
                f"val_split must be in (0, 1); received val_split={self.val_split!r}."
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(
                f"warmup_fraction must be in [0, 1); received {self.warmup_fraction!r}."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"label_smoothing must be in [0, 1); received {self.label_smoothing!r}."
            )
        phases = self.resolved_phases()
        for phase in phases:
            _positive(f"epochs of phase {phase.name!r}", phase.epochs)
        _check_prune(self.prune, phases, self.head)
        if self.phases is None and self.mode == "scratch" and self.weights not in (None, "none"):
            self.weights = None  # scratch means random initialisation
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["phases"] = [dataclasses.asdict(p) for p in self.resolved_phases()]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown configuration keys {unknown}; valid keys are {sorted(known)}."
            )
        data = dict(data)
        if data.get("phases"):
            data["phases"] = [Phase(**p) if isinstance(p, dict) else p for p in data["phases"]]
        return cls(**data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {str(path)!r}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
    return {key.replace("-", "_"): value for key, value in data.items()}


def _check_prune(prune: float | None, phases: list[Phase], head: str) -> None:
    if prune is None:
        return
    if isinstance(prune, bool) or not isinstance(prune, (int, float)) or not 0 < prune < 1:
        raise ConfigError(
            f"prune is the final share of zero weights, in (0, 1); received prune={prune!r}."
        )
    if head.startswith("sklearn-") or all(p.mode == "frozen" for p in phases):
        raise ConfigError(
            f"prune={prune} prunes a phase that trains the base, and this run has none "
            f"(head={head!r}, phases {[p.mode for p in phases]}); use mode finetune, full or "
            "scratch with a Keras head."
        )


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}; received {name}={value!r}.")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; received {value!r}.")

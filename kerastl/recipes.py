"""Recipes: what a ``mode`` means as phases, and how long each phase trains.

A run is a list of :class:`Phase` objects. ``mode`` names a recipe that expands into
phases here, once the data size is known, so budgets can be counted in optimizer
steps rather than epochs (50 images at batch 32 is 2 steps an epoch: ten epochs of
that is not training). :func:`plan_phases` returns the phases and says why.

Example:
    >>> from kerastl.config import RunConfig
    >>> plan = plan_phases(RunConfig(mode="frozen", epochs=3).resolve(), steps_per_epoch=4)
    >>> [(p.name, p.epochs) for p in plan.phases]
    [('frozen', 3)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ConfigError
from .freezing import MODES

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

RUN_MODES = MODES
HEAD_WARMUPS = ("train", "probe")
PHASE_FITS = ("train", "probe")
DEFAULT_UNFREEZE_BLOCKS = 2


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
        fit: str. ``"train"`` (gradient steps) or ``"probe"`` (a frozen phase whose
            head is fitted by logistic regression on cached features).

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
    fit: str = "train"

    def __post_init__(self) -> None:
        if self.fit not in PHASE_FITS:
            raise ConfigError(f"Phase fit must be one of {PHASE_FITS}; received "
                              f"fit={self.fit!r} in phase {self.name!r}.")
        if self.fit == "probe" and self.mode != "frozen":
            raise ConfigError(f"A probe phase fits the head on frozen features, so it needs "
                              f"mode='frozen'; received mode={self.mode!r} in phase "
                              f"{self.name!r}.")


@dataclass
class Plan:
    """The phases of a run and why they are what they are (printed, saved in run.json)."""

    phases: list[Phase]
    reasons: list[str] = field(default_factory=list)


def plan_phases(config: RunConfig, steps_per_epoch: int) -> Plan:
    """Expand ``config.mode`` into phases for data of ``steps_per_epoch`` batches.

    ``finetune``/``full`` warm the new head up with the base frozen first (a
    randomly initialised head sends large gradients into a pretrained base and
    distorts its features, Kumar et al. 2022), then unfreeze at
    ``lr * finetune_lr_factor``.

    Args:
        config: RunConfig. Resolved (:meth:`RunConfig.resolve`).
        steps_per_epoch: int. Optimizer steps in one pass over the training data.

    Returns:
        A :class:`Plan`.

    Raises:
        ConfigError: a budget that cannot hold a warm-up and a fine-tune phase.
    """
    if config.phases:
        return Plan(list(config.phases), ["phases given explicitly"])
    epochs = int(config.epochs)
    reasons = [f"{epochs} epochs x {steps_per_epoch} steps = {epochs * steps_per_epoch} "
               "optimizer steps"]
    if config.mode in ("frozen", "scratch"):
        bn = "train" if config.mode == "scratch" else config.bn_policy
        return Plan([Phase(config.mode, epochs, mode=config.mode, lr=config.lr,
                           bn_policy=bn)], reasons)
    head = config.head_epochs if config.head_epochs is not None else max(1, epochs // 3)
    if not 0 < head < epochs:
        raise ConfigError(
            f"mode={config.mode!r} runs a head warm-up then a {config.mode} phase, so it needs "
            f"0 < head_epochs < epochs; received head_epochs={head}, epochs={epochs}."
        )
    return Plan([
        Phase("head", head, mode="frozen", lr=config.lr, bn_policy=config.bn_policy),
        Phase(config.mode, epochs - head, mode=config.mode,
              lr=config.lr * config.finetune_lr_factor, bn_policy=config.bn_policy,
              **_unfreeze(config)),
    ], reasons)


def _unfreeze(config: RunConfig) -> dict[str, int | None]:
    if config.mode != "finetune":
        return {}
    if config.unfreeze_top is None and config.unfreeze_blocks is None:
        return {"unfreeze_blocks": DEFAULT_UNFREEZE_BLOCKS}
    return {"unfreeze_top": config.unfreeze_top, "unfreeze_blocks": config.unfreeze_blocks}

"""A phase: one stage of a run (a regime, a number of epochs, a learning rate).

Part of the schema: a ``RunConfig`` may list its phases, and every recipe
(:mod:`kerastl.recipes.plan`) expands into them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError
from .choices import PHASE_FITS


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
        lr: float or ``"auto"``, optional. Peak learning rate (the run's ``lr``, times
            ``finetune_lr_factor`` for phases that unfreeze the base); ``"auto"``
            runs a learning-rate range test when the phase starts.
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
    lr: float | str | None = None
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

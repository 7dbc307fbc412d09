"""Recipes: what a ``mode`` means as phases, and how long each phase trains.

A run is a list of :class:`Phase` objects. ``mode`` names a recipe that expands into
phases here, once the data size is known, so budgets can be counted in optimizer
steps rather than epochs (50 images at batch 32 is 2 steps an epoch: ten epochs of
that is not training). :func:`plan_phases` returns the phases and says why.

Example:
    >>> from kerastl.config.schema import RunConfig
    >>> from kerastl.recipes.resolve import resolve_config
    >>> plan = plan_phases(resolve_config(RunConfig(mode="frozen", epochs=3)), steps_per_epoch=4)
    >>> [(p.name, p.epochs) for p in plan.phases]
    [('frozen', 3)]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config.choices import DEFAULT_UNFREEZE_BLOCKS, MAX_STEPS, MIN_EPOCHS, TARGET_STEPS
from ..config.phases import Phase
from ..core.console import hint
from ..core.errors import ConfigError
from ..models.weights import has_pretrained_weights

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import RunConfig

@dataclass
class Plan:
    """The phases of a run and why they are what they are (printed, saved in run.json)."""

    phases: list[Phase]
    reasons: list[str] = field(default_factory=list)


def plan_phases(config: RunConfig, steps_per_epoch: int) -> Plan:
    """Expand ``config.mode`` into phases for data of ``steps_per_epoch`` batches.

    * ``frozen``/``scratch``: one phase.
    * ``finetune``/``full``: a head warm-up with the base frozen (a randomly
      initialised head sends large gradients into a pretrained base and distorts its
      features, Kumar et al. 2022), then the unfrozen phase at
      ``lr * finetune_lr_factor``. With ``head_warmup="probe"`` the warm-up is a
      logistic regression written into the head (seconds), and every epoch of the
      budget goes to the unfrozen phase.
    * ``auto``: the probe, then ``full``; with ``keep="best"`` the run keeps
      whichever validated better, the probe included.
    * ``prune``: one more phase, ``"prune"``, as long as the trained one: pruning
      starts from the trained model, as magnitude pruning is meant to (Zhu & Gupta
      2017 prune a converged network), rather than while its features still move.

    ``epochs="auto"`` sizes the budget in optimizer steps (:func:`epoch_budget`).

    Args:
        config: RunConfig. Resolved (:func:`~kerastl.recipes.resolve.resolve_config`).
        steps_per_epoch: int. Optimizer steps in one pass over the training data.

    Returns:
        A :class:`Plan`.

    Raises:
        ConfigError: a budget that cannot hold a warm-up and a fine-tune phase.
    """
    if config.phases:
        return Plan(list(config.phases), ["phases given explicitly"])
    plan = _trained_phases(config, steps_per_epoch)
    # The prune phase repeats the trained phase, learning rate included. Chosen on
    # 1,000 validation images (Fashion-MNIST training split, data_samples' classes and
    # default run): best pruned minus unpruned val accuracy -0.9 points at the trained
    # phase's 1e-3, -1.6 at 3e-4, -2.8 at 1e-4 (less rate, less recovery).
    if config.prune is not None and plan.phases[-1].mode != "frozen":
        trained = plan.phases[-1]
        plan.phases.append(dataclasses.replace(trained, name="prune"))
        plan.reasons.append(f"--prune {config.prune:g}: the trained model is pruned in a "
                            f"second '{trained.mode}' phase of {trained.epochs} epochs")
    return plan


def _trained_phases(config: RunConfig, steps_per_epoch: int) -> Plan:
    epochs, reason = epoch_budget(config.epochs, steps_per_epoch)
    reasons = [reason]
    if config.mode == "auto" and not has_pretrained_weights(config.weights):
        if config.multi_depth:  # a probe on random features learns nothing (issue 27)
            raise ConfigError(f"{hint('head', 'multidepth')} reads every depth of a "
                              f"pretrained base; {hint('weights', config.weights)} gives no "
                              f"pretrained weights. Give {hint('weights', 'imagenet')} or a "
                              f"weights file, or use {hint('head', 'avg')} to train from "
                              "scratch.")
        reasons.append(_scratch_reason(config))
        return Plan([Phase("scratch", epochs, mode="scratch", lr=config.lr,
                           bn_policy="train")], reasons)
    mode = "full" if config.mode == "auto" else config.mode
    if config.multi_depth and mode == "frozen":  # one convex fit: no epochs to budget
        return Plan([Phase("probe", 1, mode="frozen", bn_policy="frozen", fit="probe")], [
            "--head multidepth: one logistic regression on every depth of the frozen base and "
            "the pooled pixels, C chosen by cross-validation on the training images"])
    if mode in ("frozen", "scratch"):
        bn = "train" if mode == "scratch" else config.bn_policy
        return Plan([Phase(mode, epochs, mode=mode, lr=config.lr, bn_policy=bn)], reasons)
    # lr="auto": each phase runs its own range test; the factor does not apply.
    tune_lr = "auto" if config.lr == "auto" else config.lr * config.finetune_lr_factor
    if config.mode == "auto" or config.head_warmup == "probe":
        probe = ("the multi-depth probe (every depth of the frozen base and the pooled "
                 "pixels)" if config.multi_depth else "a linear probe")
        reasons.append(f"head warm-up: {probe} on cached features, then every epoch "
                       f"to the {mode} phase")
        return Plan([
            Phase("probe", 1, mode="frozen", bn_policy=config.bn_policy, fit="probe"),
            Phase(mode, epochs, mode=mode, lr=tune_lr, bn_policy=config.bn_policy,
                  **_unfreeze(config)),
        ], reasons)
    head = config.head_epochs if config.head_epochs is not None else max(1, epochs // 3)
    if not 0 < head < epochs:
        raise ConfigError(
            f"mode={config.mode!r} runs a head warm-up then a {config.mode} phase, so it needs "
            f"0 < head_epochs < epochs; received head_epochs={head}, epochs={epochs}."
        )
    return Plan([
        Phase("head", head, mode="frozen", lr=config.lr, bn_policy=config.bn_policy),
        Phase(mode, epochs - head, mode=mode, lr=tune_lr, bn_policy=config.bn_policy,
              **_unfreeze(config)),
    ], reasons)


# Budgets in optimizer steps (epochs="auto"). Chosen on the transfer suite's
# validation images (benchmarks/transfer_suite.py), not on any test set.


def epoch_budget(epochs: int | str, steps_per_epoch: int) -> tuple[int, str]:
    """Epochs to train, and why: ``epochs`` as given, or sized in optimizer steps.

    ``"auto"`` gives at least :data:`TARGET_STEPS` optimizer steps (tiny data sets get
    many epochs: 50 images at batch 32 are 2 steps each) and at least
    :data:`MIN_EPOCHS` passes, but no more than :data:`MAX_STEPS` steps in all (large
    data sets get fewer, longer epochs).

    Example:
        >>> epoch_budget("auto", 2)[0], epoch_budget("auto", 16)[0], epoch_budget(7, 16)[0]
        (150, 19, 7)
    """
    if epochs != "auto":
        return int(epochs), (f"{epochs} epochs x {steps_per_epoch} steps = "
                             f"{int(epochs) * steps_per_epoch} optimizer steps (--epochs)")
    wanted = max(math.ceil(TARGET_STEPS / steps_per_epoch), MIN_EPOCHS)
    chosen = max(1, min(wanted, MAX_STEPS // steps_per_epoch))
    return chosen, (f"--epochs auto: {chosen} epochs x {steps_per_epoch} steps = "
                    f"{chosen * steps_per_epoch} optimizer steps (at least {TARGET_STEPS} "
                    f"steps and {MIN_EPOCHS} epochs, at most {MAX_STEPS} steps)")


def _scratch_reason(config: RunConfig) -> str:
    what = (hint("weights", None) if config.weights is None
            else f"{hint('weights', config.weights)} holds a network that never trained")
    size = f" at {config.image_size} px" + ("" if "image_size" in config.given else
                                             " (the images' own side where it was found, "
                                             "within the backbone's sizes)")
    # A probe on random features and fine-tuning with BatchNorm in inference mode
    # (random statistics) learn nothing: the loss stays at ln K (issue 27).
    return (f"no pretrained weights ({what}): auto trains every layer from scratch with "
            f"BatchNorm training{size}")


def _unfreeze(config: RunConfig) -> dict[str, int | None]:
    if config.mode != "finetune":
        return {}
    if config.unfreeze_top is None and config.unfreeze_blocks is None:
        return {"unfreeze_blocks": DEFAULT_UNFREEZE_BLOCKS}
    return {"unfreeze_top": config.unfreeze_top, "unfreeze_blocks": config.unfreeze_blocks}

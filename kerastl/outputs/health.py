"""Whether the trained network learned: never hidden behind a blend or a probe.

A run's final model can be more than the network: ``--mode auto`` adds a logistic
regression on the input pixels. On random weights fine-tuned with BatchNorm in
inference mode the network stayed at chance for 75 epochs while the blend alone
reported 100 % (issue 27). :func:`check_network` compares the network's own
accuracy with chance, the run's linear probe and the pixel model on the same
images, and says what most likely went wrong and what to change.

Example:
    >>> check = check_network(network_accuracy=0.25, chance=0.25, examples=120)
    >>> check["status"]
    'at_chance'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.console import hint

# How far the network may fall below a linear model on pixels before the run says
# so: the blend then carries the result, and the network is the part to fix.
PIXEL_MARGIN = 0.10
# Below its own probe by more than this on held-out images: fine-tuning hurt.
PROBE_MARGIN = 0.05


def chance_accuracy(task: str, labels: np.ndarray) -> float:
    """Accuracy of always predicting the most common answer on ``labels``.

    Example:
        >>> chance_accuracy("multiclass", np.array([0, 0, 1, 2]))
        0.5
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    if task == "multilabel":  # every label right: the most common whole row
        _, counts = np.unique(labels.astype(np.int64), axis=0, return_counts=True)
        return float(counts.max() / len(labels))
    _, counts = np.unique(labels.reshape(-1).astype(np.int64), return_counts=True)
    return float(counts.max() / counts.sum())


def at_chance(accuracy: float, chance: float, examples: int) -> bool:
    """Whether ``accuracy`` is within two binomial standard errors of ``chance``.

    Example:
        >>> at_chance(0.30, 0.25, 120), at_chance(0.83, 0.25, 120)
        (True, False)
    """
    spread = 2.0 * math.sqrt(max(chance * (1.0 - chance), 1e-12) / max(examples, 1))
    return accuracy <= chance + max(spread, 0.01)


def check_network(*, network_accuracy: float, chance: float, examples: int,
                  probe_accuracy: float | None = None, pixel_accuracy: float | None = None,
                  held_out: bool = True, pretrained: bool = True,
                  phase_modes: Sequence[tuple[str, str]] = (),
                  balanced_accuracy: float | None = None, classes: int = 0,
                  ) -> dict[str, Any]:
    """What the network alone scored, against chance, its probe and pixels.

    Args:
        network_accuracy: float. The network without blend, on the evaluation split.
        chance: float. :func:`chance_accuracy` of that split.
        examples: int. Images in that split.
        probe_accuracy: float, optional. The run's linear probe (validation, else
            cross-validated on the training images).
        pixel_accuracy: float, optional. The pixel model alone on the same split.
        held_out: bool. Whether the split is held out (test or validation).
        pretrained: bool. Whether the base started from pretrained weights.
        phase_modes: sequence of ``(mode, bn_policy)`` of the phases that trained.
        balanced_accuracy: float, optional. Mean per-class recall (single-label
            tasks). On imbalanced images accuracy alone sits near the majority rate
            even for a network that learned; it is at chance only if this is near
            ``1 / classes`` too.
        classes: int. Number of classes, with ``balanced_accuracy``.

    Returns:
        ``{"status", "network_accuracy", "chance", "message", "fix"}``; status is
        ``"ok"``, ``"at_chance"``, ``"below_probe"`` or ``"below_pixels"``.
    """
    facts: dict[str, Any] = {"network_accuracy": round(float(network_accuracy), 4),
                             "chance": round(float(chance), 4),
                             "probe_accuracy": probe_accuracy,
                             "pixel_accuracy": pixel_accuracy}
    stuck = at_chance(network_accuracy, chance, examples)
    if stuck and balanced_accuracy is not None and classes > 1:
        stuck = at_chance(balanced_accuracy, 1.0 / classes, examples)
    if stuck:
        return {**facts, "status": "at_chance", **_chance_cause(pretrained, phase_modes)}
    if held_out and probe_accuracy is not None and \
            network_accuracy < probe_accuracy - PROBE_MARGIN:
        return {**facts, "status": "below_probe",
                "message": f"the network alone ({network_accuracy:.4f}) is below its own "
                           f"linear probe ({probe_accuracy:.4f}): fine-tuning hurt the "
                           "pretrained features",
                "fix": f"try {hint('mode', 'frozen')}, a lower "
                       f"{hint('finetune_lr_factor', 0.03)}, or validation data "
                       f"({hint('val_data', 'DIR')}) so {hint('keep', 'best')} can keep "
                       "the probe"}
    if pixel_accuracy is not None and network_accuracy < pixel_accuracy - PIXEL_MARGIN:
        return {**facts, "status": "below_pixels",
                "message": f"the network alone ({network_accuracy:.4f}) is far below a "
                           f"linear model on the pixels ({pixel_accuracy:.4f}): the "
                           "blended result rests on the pixel model",
                "fix": f"try more epochs ({hint('epochs', 'N')}), "
                       f"{hint('lr', 'auto')}, or weights pretrained nearer these "
                       "images"}
    return {**facts, "status": "ok", "message": "", "fix": ""}


def _chance_cause(pretrained: bool, phase_modes: Sequence[tuple[str, str]]) -> dict[str, str]:
    frozen_bn = any(mode != "scratch" and bn == "frozen" for mode, bn in phase_modes)
    if not pretrained and frozen_bn:
        return {"message": "the network alone is at chance: it never learned. Its base has "
                           "random weights and trained with BatchNorm in inference mode "
                           "(random statistics)",
                "fix": f"train from scratch: {hint('mode', 'scratch')} (or "
                       f"{hint('mode', 'auto')}, which does so without pretrained "
                       f"weights), or {hint('bn_policy', 'train')}"}
    return {"message": "the network alone is at chance: it never learned",
            "fix": f"try {hint('lr', 'auto')} (a learning-rate range test) or a lower "
                   f"{hint('lr', 0.001)}, more epochs ({hint('epochs', 'N')}), and check "
                   "the labels with python -m kerastl.doctor"}

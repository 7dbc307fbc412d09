"""The learning-rate range test (Smith 2017), as fastai's ``lr_find`` does it.

The model trains for up to ``steps`` optimizer steps while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``; the loss is smoothed (exponential
moving average, debiased) and the test stops once it exceeds four times its minimum.
The suggestion is fastai's "valley": the learning rate two thirds of the way down
the longest stretch over which the loss keeps falling. Weights and optimizer state
are put back afterwards, so the test never changes the model.

The test uses the run's own train step (:class:`kerastl.training.trainer.Trainer`), so it
runs under every strategy, on cached features for a frozen head, and on the phase's
exact trainable set.

Example:
    >>> import kerastl
    >>> result = kerastl.lr_find(kerastl.RunConfig(epochs=1))  # doctest: +SKIP
    >>> result.suggestion  # doctest: +SKIP
    0.0031622776601683794
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from ..core.files import save_figure
from .phase_data import PhaseData
from .steps import distribute_dataset
from .trainer import Trainer

START_LR = 1e-7
END_LR = 10.0
STEPS = 100
SMOOTHING = 0.98
DIVERGENCE = 4.0


@dataclass
class LRFinderResult:
    """What a range test measured.

    Attributes:
        lrs: list of float. The learning rate of each step.
        losses: list of float. Smoothed training loss after each step.
        suggestion: float. The learning rate ``--lr auto`` uses
            (:data:`AUTO_SUGGESTION` of :attr:`suggestions`).
        phase: str. The phase whose trainable set was tested.
        notes: list of str. E.g. that the test stopped at divergence.
        suggestions: dict. Every rule's suggestion: ``"valley"`` (fastai's default),
            ``"minimum/10"`` (fastai v1), ``"steepest"``.
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float
    phase: str = ""
    notes: list[str] = field(default_factory=list)
    suggestions: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "suggestion": self.suggestion,
                "suggestions": self.suggestions, "lrs": self.lrs, "losses": self.losses,
                "notes": self.notes}

    def figure(self):
        """Loss against learning rate (log scale), the suggestion marked."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, color="tab:blue")
        ax.axvline(self.suggestion, color="tab:red", linestyle="--",
                   label=f"suggestion {self.suggestion:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        ax.set_title(f"Learning-rate range test{f' ({self.phase})' if self.phase else ''}")
        ax.legend()
        return fig

    def plot(self, path=None):
        """Save the figure to ``path`` (PNG) and return it; shows inline in notebooks."""
        fig = self.figure()
        if path is not None:
            save_figure(fig, path)
        return fig


def range_test(trainer: Trainer, data: PhaseData, *, phase_name: str = "",
               start_lr: float = START_LR, end_lr: float = END_LR,
               steps: int = STEPS) -> LRFinderResult:
    """Run the range test with ``trainer``'s compiled step for the current phase.

    The trainer must have compiled the phase (its regime set, its optimizer built).
    Model weights and optimizer variables are restored afterwards.

    Args:
        trainer: Trainer. After ``_compile_phase``.
        data: PhaseData. The phase's data; epochs are repeated as needed.
        phase_name: str. For the result and the plot.
        start_lr, end_lr: float. The range, ``0 < start_lr < end_lr``.
        steps: int. Optimizer steps at most.

    Returns:
        An :class:`LRFinderResult`.
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find needs 0 < start_lr < end_lr; received start_lr="
                          f"{start_lr!r}, end_lr={end_lr!r}.")
    if steps < 5:
        raise ConfigError(f"lr_find needs at least 5 steps; received steps={steps!r}.")
    weights = trainer.model.get_weights()
    optimizer_state = [np.asarray(v) for v in trainer.optimizer.variables]
    rate = _learning_rate_variable(trainer.optimizer)
    rates = np.geomspace(start_lr, end_lr, steps)
    lrs, losses, notes = [], [], []
    average, best = 0.0, math.inf
    try:
        batches = _repeated(trainer, data)
        for i, lr in enumerate(rates):
            rate.assign(float(lr))
            loss_sum, n = (float(v) for v in trainer.step(next(batches))[:2])
            loss = loss_sum / max(n, 1.0)
            if not math.isfinite(loss):
                notes.append(f"loss became {loss} at lr {lr:.3g}; stopped")
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            lrs.append(float(lr))
            losses.append(smoothed)
            best = min(best, smoothed)
            if i > 5 and smoothed > DIVERGENCE * best:
                notes.append(f"loss passed {DIVERGENCE:g}x its minimum at lr {lr:.3g}; stopped")
                break
    finally:
        trainer.model.set_weights(weights)
        for variable, value in zip(trainer.optimizer.variables, optimizer_state, strict=True):
            variable.assign(value)
    if len(losses) < 5:
        raise ConfigError(f"The learning-rate range test diverged within {len(losses)} steps "
                          f"(from lr {start_lr:g}); pass an explicit --lr instead.")
    suggestions = {name: method(lrs, losses) for name, method in SUGGESTIONS.items()}
    return LRFinderResult(lrs, losses, suggestions[AUTO_SUGGESTION], phase_name, notes,
                          suggestions)


def minimum_over_ten(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the learning rate at the lowest loss (fastai v1's rule).

    Example:
        >>> minimum_over_ten([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.8, 0.5, 2.0])
        0.01
    """
    return float(lrs[int(np.argmin(losses))] / 10)


def steepest(lrs: list[float], losses: list[float]) -> float:
    """The learning rate where the loss falls fastest against log(lr).

    Example:
        >>> steepest([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.95, 0.3, 0.28])
        0.01
    """
    slopes = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slopes))])


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's suggestion: 2/3 down the longest decreasing run of the loss curve.

    The longest (not necessarily contiguous) decreasing subsequence of the losses
    is found in O(n^2); the suggestion lies between its start and its end, nearer the
    end, where the loss is still falling steeply and far from divergence.

    Example:
        >>> lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
        >>> valley(lrs, [1.0, 0.9, 0.5, 0.4, 3.0])
        0.001
    """
    n = len(losses)
    longest = [1] * n
    start_of = list(range(n))
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i], start_of[i] = longest[j] + 1, start_of[j]
    end = int(np.argmax(longest))
    start = start_of[end]
    sections = (end - start) / 3
    index = start + int(sections) + int(sections / 2)
    return float(lrs[min(index, n - 1)])


SUGGESTIONS = {"valley": valley, "minimum/10": minimum_over_ten, "steepest": steepest}
# The suggestion --lr auto uses, chosen on the transfer suite's validation images.
AUTO_SUGGESTION = "valley"


def suggest_lr(trainer: Trainer, data: PhaseData, phase_name: str = "") -> float:
    """The range test's suggested learning rate: what ``Trainer(find_lr=...)`` takes."""
    return range_test(trainer, data, phase_name=phase_name).suggestion


def _learning_rate_variable(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = getattr(inner, "_learning_rate", None)
    if not hasattr(rate, "assign"):
        raise ConfigError("lr_find needs an optimizer with a constant (variable) learning "
                          "rate; compile the phase with schedule='constant'.")
    return rate


def _repeated(trainer: Trainer, data: PhaseData):
    """An endless iterator of distributed training batches, epoch after epoch."""
    epoch = 0
    while True:
        iterator = iter(distribute_dataset(trainer.strategy, data.train(epoch)))
        for _ in range(data.steps_per_epoch):
            yield iterator
        epoch += 1

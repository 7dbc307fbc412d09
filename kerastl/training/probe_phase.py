"""A probe phase: the head fitted by logistic regression instead of gradient steps."""

from __future__ import annotations

import time
from typing import Any

import keras

from ..config.phases import Phase
from ..core.errors import ConfigError
from ..models.linear_probe import fit_probe
from .phase_data import PhaseData


def probe_epoch(trainer: Any, phase: Phase, data: PhaseData, epoch: int,
                callbacks: keras.callbacks.CallbackList) -> dict[str, float]:
    """A probe phase's one epoch: logistic regression on cached features.

    The head is fitted by :func:`kerastl.models.linear_probe.fit_probe` and written into
    the model; ``trainer`` (a :class:`kerastl.training.trainer.Trainer`) then evaluates
    it like any epoch, so history, callbacks and best-epoch tracking see one shape.
    """
    callbacks.on_epoch_begin(epoch)
    started = time.perf_counter()
    if data.arrays is None:
        raise ConfigError(f"Phase {phase.name!r} is a probe, which needs cached features; "
                          "this phase trains on images (--feature-cache off?).")
    features, labels = data.arrays()
    facts = fit_probe(data.model, features, labels, task=trainer.task,
                      class_weight=trainer.class_weight, seed=trainer.seed,
                      label_smoothing=trainer.label_smoothing)
    trainer.probe_facts = facts
    train = trainer.evaluate(data.train(epoch))
    logs = {key[len("val_"):]: value for key, value in train.items()}
    if data.val is not None:
        logs.update(trainer.evaluate(data.val))
    logs["lr"] = 0.0
    logs["seconds"] = round(time.perf_counter() - started, 3)
    if trainer.verbose:
        cv = ("" if facts["cv_accuracy"] is None
              else f", cross-validated accuracy {facts['cv_accuracy']:.4f}")
        trainer.log(f"Linear probe ({phase.name}): logistic regression C={facts['C']:g}"
                 f"{cv}; " + " - ".join(f"{k} {v:.4f}" for k, v in logs.items()
                                        if k not in ("seconds", "lr")))
    callbacks.on_epoch_end(epoch, logs)
    return logs

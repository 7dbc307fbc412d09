"""The weights of the best validated epoch, kept in memory per phase and per run."""

from __future__ import annotations

import math
from pathlib import Path

import keras  # noqa: E402
import numpy as np

from ..core import backend as _backend  # noqa: F401
from .checkpoints import (
    MODEL_WEIGHTS_FILE,
    TrainState,
    read_best_weights,
)


class BestWeights:
    """The weights of the best validated epoch, of the run and of the current phase.

    "Best" is the highest ``val_accuracy``, ties broken by the lower ``val_loss``.
    Kept in memory (every worker of a distributed run tracks the same epochs, since
    validation metrics are reduced over replicas) and saved with each checkpoint.
    """

    def __init__(self) -> None:
        self.overall: list[np.ndarray] | None = None
        self.phase: list[np.ndarray] | None = None
        self._constant: tuple[tuple, dict[int, np.ndarray]] | None = None
        # (epoch, snapshot) when a phase ended by restoring its best snapshot: until
        # the next epoch the checkpoint's own weights are that snapshot.
        self._held: tuple[int, list[np.ndarray]] | None = None

    def restore_phase(self, model: keras.Model, state: TrainState) -> None:
        """Give ``model`` the weights of the phase's best epoch."""
        model.set_weights(self.phase)
        self._held = (state.epoch, self.phase)

    def update(self, model: keras.Model, state: TrainState, phase: str, logs: dict, *,
               counts_for_run: bool = True) -> None:
        if "val_accuracy" not in logs or not math.isfinite(logs.get("val_loss", math.nan)):
            return
        entry = {"epoch": state.epoch, "phase": phase, "val_accuracy": logs["val_accuracy"],
                 "val_loss": logs["val_loss"]}
        improves_phase = _better(entry, state.phase_best)
        improves_run = counts_for_run and _better(entry, state.best)
        if improves_phase or improves_run:
            weights = self._snapshot(model, phase)
            if improves_phase:
                state.phase_best, self.phase = entry, weights
            if improves_run:
                state.best, self.overall = entry, weights

    def _snapshot(self, model: keras.Model, phase: str) -> list[np.ndarray]:
        """``model.get_weights()``, copying the weights of frozen layers once per phase.

        No step changes the variables of a layer with ``trainable=False`` (Keras 3
        keeps a frozen BatchNorm in inference mode), so a frozen base is copied at
        its phase's first better epoch only (VGG16: 59 MB per epoch otherwise).
        """
        frozen = [w for layer in _leaf_layers(model) if not layer.trainable
                  for w in layer.weights]
        key = (phase, tuple(id(w) for w in frozen))
        if self._constant is None or self._constant[0] != key:
            self._constant = (key, {id(w): w.numpy() for w in frozen})
        constant = self._constant[1]
        return [constant[id(w)] if id(w) in constant else w.numpy() for w in model.weights]

    def to_save(self, state: TrainState, model: keras.Model) -> dict[str, list[np.ndarray]]:
        """Best weights a checkpoint of ``state`` must carry besides ``model``'s own.

        None when the best epoch is the checkpointed one or the phase ended on it:
        :meth:`load` then reads them from the checkpoint's model weights. After a
        frozen VGG16 phase that saves 118 MB of the 177 MB checkpoint (issue 11).
        """
        saved = {}
        for key, entry, weights in (("best", state.best, self.overall),
                                    ("phase_best", state.phase_best, self.phase)):
            if entry is None or weights is None or entry["epoch"] == state.epoch:
                continue
            if not self._model_holds(weights, state, model):
                saved[key] = weights
        return saved

    def _model_holds(self, weights: list[np.ndarray], state: TrainState,
                     model: keras.Model) -> bool:
        if self._held is None or self._held[0] != state.epoch or self._held[1] is not weights:
            return False
        # Checked, not assumed: a phase hook may have changed the weights since.
        return all(np.array_equal(w.numpy(), saved)
                   for w, saved in zip(model.weights, weights, strict=True))

    def load(self, checkpoint: Path, state: TrainState, model: keras.Model) -> None:
        """Best weights of a resumed run: saved beside the checkpoint, or its own."""
        saved = read_best_weights(checkpoint)
        own = None
        for key, attr in (("best", "overall"), ("phase_best", "phase")):
            entry = getattr(state, key)
            if entry is None:
                continue
            if key not in saved:  # the checkpoint's own weights are the best epoch's
                if own is None:
                    model.load_weights(str(checkpoint / MODEL_WEIGHTS_FILE))
                    own = model.get_weights()
                saved[key] = own
            setattr(self, attr, saved[key])


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) or getattr(layer, "layers", None):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _better(entry: dict, best: dict | None) -> bool:
    if best is None:
        return True
    if entry["val_accuracy"] != best["val_accuracy"]:
        return entry["val_accuracy"] > best["val_accuracy"]
    return entry["val_loss"] < best["val_loss"]

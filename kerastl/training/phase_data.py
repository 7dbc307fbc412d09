"""What a phase trains on, and the hooks that run with every step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..config.phases import Phase
from ..core import backend as _backend  # noqa: F401
from .checkpoints import (
    TrainState,
)


class Preempted(Exception):
    """SIGTERM arrived; the message says which epoch a resumed run continues from."""


@dataclass
class PhaseData:
    """What one phase trains on.

    Attributes:
        model: keras.Model. What the step calls: the full model on images, or the
            head model on cached features (same layer objects as the full model).
        train: callable. ``epoch -> tf.data.Dataset`` of ``(x, y)`` batches; the
            order must depend only on the epoch so resumed runs see the same data.
        val: tf.data.Dataset, optional. Validation batches.
        steps_per_epoch: int. Batches per epoch.
        description: str. For the run log (e.g. why the feature cache is used).
        arrays: callable, optional. ``() -> (features, labels)`` of the whole
            training set, for probe phases (cached features only).
        steps_per_execution: int, optional. Train steps per compiled call for this
            phase, instead of the trainer's (cached features: a whole epoch).
        train_for_worker: callable, optional. ``(epoch, InputContext) -> Dataset``: one
            input pipeline's per-replica batches of the same global batches ``train``
            gives (:meth:`kerastl.ImageData.worker_batches`). Used with several workers
            or a TPU, so each worker reads and decodes only its share.
        val_for_worker: callable, optional. ``InputContext -> Dataset``: the same for
            the validation batches.
    """

    model: keras.Model
    train: Callable[[int], tf.data.Dataset]
    val: tf.data.Dataset | None
    steps_per_epoch: int
    description: str = ""
    arrays: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
    steps_per_execution: int | None = None
    train_for_worker: Callable[[int, tf.distribute.InputContext], tf.data.Dataset] | None = None
    val_for_worker: Callable[[tf.distribute.InputContext], tf.data.Dataset] | None = None


class StepHook:
    """Something that runs with every optimizer step, such as magnitude pruning.

    The one training loop serves every strategy, resumed runs and the cached-feature
    path; a hook joins it instead of a second loop. Override what you need:

    * ``on_phase_begin(trainer, phase, index, state)``: on the host, after the phase's
      optimizer is built and a resumed checkpoint restored, before the step is traced
      (create variables here, inside ``trainer.strategy.scope()``).
    * ``on_epoch_begin(phase_epoch)``: on the host, before each epoch of the phase.
    * ``after_step()``: traced into the compiled train function right after each
      ``strategy.run`` step, in cross-replica context (assign to mirrored variables
      there; nothing is returned).
    * ``on_phase_end()``: on the host, after the phase's callbacks ended (after an
      early-stopping restore).
    * ``keeps_epoch()``: on the host, after each epoch: whether that epoch may become
      the best one kept (pruning: only epochs at the final sparsity, since an earlier,
      denser epoch restored at the end would be pruned again without recovering).
    """

    def on_phase_begin(self, trainer, phase: Phase, index: int, state: TrainState) -> None:
        pass

    def on_epoch_begin(self, phase_epoch: int) -> None:
        pass

    def after_step(self) -> None:
        pass

    def on_phase_end(self) -> None:
        pass

    def keeps_epoch(self) -> bool:
        return True

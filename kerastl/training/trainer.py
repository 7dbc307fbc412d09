"""One training loop for every device, strategy and phase.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585: ``_maybe_symbolic_build`` reduces a per-replica batch), so
kerastl owns its train step: ``strategy.run`` over a ``GradientTape`` step, the loss
averaged with ``tf.nn.compute_average_loss`` over the global batch, and the Keras
optimizer's ``apply_gradients`` (which all-reduces gradients across replicas). The
same loop runs on one CPU, several GPUs, several workers and TPUs, for image batches
and for cached features, so there is one path to keep correct.

Each phase sets its regime, builds a fresh optimizer and a fresh ``tf.function``,
and records which variables the step was traced with: a later change of
``trainable`` without a new phase raises :class:`~kerastl.core.errors.StaleTrainableError`
instead of silently training the old set (keras#6405).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..config.choices import KEEP_WEIGHTS
from ..config.phases import Phase
from ..core import backend as _backend  # noqa: F401
from ..core.console import epoch_in_phase, epoch_line, interactive
from ..core.errors import ConfigError, DataError, NonFiniteLossError, StaleTrainableError
from ..models.freezing import UnfreezePlan, set_regime, trainable_signature
from .best_weights import BestWeights
from .checkpoints import TrainState, restore_optimizer, restore_weights, save_checkpoint
from .losses import make_loss
from .optimizers import block_lr_multipliers, make_optimizer, make_schedule
from .phase_data import PhaseData, Preempted, StepHook
from .probe_phase import probe_epoch
from .steps import CompiledSteps, replica_batches, step_logs

# What a run ends with: the weights of its best validated epoch, or the last ones.


# ------------------------------------------------------------------ the trainer
class Trainer:
    """Runs phases with one distributed step, keeps the best epoch, checkpoints, resumes.

    Args:
        model: keras.Model. A kerastl model (built inside ``strategy.scope()``).
        strategy: tf.distribute.Strategy. From :mod:`kerastl.training.runtime`.
        task: str. ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        optimizer: str. ``"adam"``, ``"adamw"`` or ``"sgd"``.
        schedule: str. ``"constant"``, ``"cosine"`` or ``"onecycle"``.
        weight_decay, momentum, label_smoothing: optimisation knobs.
        warmup_fraction: float. Share of each phase's steps spent warming the
            learning rate up linearly (cosine schedule).
        class_weights: sequence of float, optional. Loss weight per class
            (multiclass and binary tasks), in the training and the validation loss.
        class_weight: str. ``"none"`` or ``"balanced"``, for probe phases.
        early_stopping: int, optional. Patience: a phase stops after this many epochs
            without a new best validated epoch.
        keep: str. ``"best"``: each phase ends with the weights of its best validated
            epoch, and the run with those of its best epoch overall; ``"last"``: the
            weights of the last epoch. Without validation data, always the last.
        block_lr_decay: float. In phases that train the base from pretrained weights,
            each block below the top learns at this factor of the one above it
            (1.0: one learning rate for every layer).
        anchor_decay: float. In those phases, decay toward the weights the phase
            starts from instead of toward zero (L2-SP; see
            :func:`kerastl.training.optimizers.make_optimizer`). 0.0: off.
        callbacks: sequence of keras callbacks. Receive the usual epoch hooks.
        checkpoint_dir: path, optional. Where epoch checkpoints go (chief only).
        checkpoint_interval: float. Seconds between checkpoints within a phase (the
            end of every phase is always checkpointed); 0 checkpoints every epoch.
        is_chief: bool. Only the chief writes checkpoints.
        wrap_optimizer: callable, optional. E.g. loss scaling for ``mixed_float16``.
        jit_compile: bool. XLA-compile the step (off on CPU, where it is slower).
        steps_per_execution: int. Train steps per call of the compiled function.
        final_from_phase: int. With ``keep="best"``, the run's best epoch is chosen
            among this phase and later ones (pruning: the pruned phase).
        seed: int. Seeds probe phases' solver and folds.
        verbose: int. 0 silent, 1 progress bar, 2 one line per epoch.
        step_hooks: sequence of :class:`StepHook`. Run with every optimizer step
            (e.g. :class:`kerastl.training.pruning.MagnitudePruning`).
        find_lr: callable, optional. ``find_lr(trainer, data, phase_name)`` returns
            the learning rate of a phase with ``lr="auto"``, found when that phase
            starts (:func:`kerastl.training.lr_range_test.suggest_lr`); passed in so
            the trainer never depends on how the rate is found.

    Example:
        >>> trainer = Trainer(model, tf.distribute.get_strategy())  # doctest: +SKIP
        >>> state = trainer.run([Phase("head", 2)], data_for_phase)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: keras.Model,
        strategy: tf.distribute.Strategy,
        *,
        task: str = "multiclass",
        optimizer: str = "adamw",
        schedule: str = "cosine",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        warmup_fraction: float = 0.0,
        class_weights: Sequence[float] | None = None,
        class_weight: str = "none",
        early_stopping: int | None = None,
        keep: str = "best",
        block_lr_decay: float = 1.0,
        anchor_decay: float = 0.0,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: float = 0.0,
        is_chief: bool = True,
        wrap_optimizer: Callable | None = None,
        jit_compile: bool = False,
        steps_per_execution: int = 1,
        final_from_phase: int = 0,
        seed: int = 0,
        verbose: int = 1,
        log: Callable[[str], None] = print,
        step_hooks: Sequence[StepHook] = (),
        find_lr: Callable[[Trainer, PhaseData, str], float] | None = None,
    ) -> None:
        self.find_lr = find_lr
        if keep not in KEEP_WEIGHTS:
            raise ConfigError(f"keep must be one of {KEEP_WEIGHTS}; received keep={keep!r}.")
        self.model, self.strategy, self.task = model, strategy, task
        self.probe_facts: dict = {}  # the last linear probe's facts, for the blend
        self.optimizer_name, self.schedule = optimizer, schedule
        self.weight_decay, self.momentum = weight_decay, momentum
        self.warmup_fraction = warmup_fraction
        self.loss_fn = make_loss(task, label_smoothing)
        self.label_smoothing = label_smoothing
        if class_weights is not None and task == "multilabel":
            raise ConfigError(
                "class_weights weight each example by its class, which a multilabel example "
                f"does not have; received task='multilabel', class_weights={class_weights!r}. "
                "Use class weights with multiclass or binary tasks."
            )
        self.class_weights = class_weights
        self.class_weight = class_weight
        self.early_stopping = early_stopping
        self.keep = keep
        self.block_lr_decay = float(block_lr_decay)
        self.anchor_decay = float(anchor_decay)
        self.callbacks = list(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_interval = float(checkpoint_interval)
        self.is_chief = is_chief
        self.wrap_optimizer = wrap_optimizer
        self.jit_compile = jit_compile
        self.steps_per_execution = max(1, int(steps_per_execution))
        self.final_from_phase = final_from_phase
        self.seed = seed
        self.verbose = verbose
        self.log = log
        self.step_hooks = list(step_hooks)
        self.optimizer = None
        self._steps: CompiledSteps | None = None
        self._stop_requested = threading.Event()
        self._best = BestWeights()
        self._last_checkpoint = time.monotonic()
        self._unsaved_epochs = 0

    # -- public -----------------------------------------------------------------
    def run(
        self,
        phases: Sequence[Phase],
        data_for_phase: Callable[[Phase], PhaseData],
        state: TrainState | None = None,
        resume_from: Path | None = None,
        on_epoch_end: Callable[[TrainState], None] | None = None,
    ) -> TrainState:
        """Train every phase in order, from ``state`` (a resumed run) or the start.

        Returns:
            The final :class:`~kerastl.training.checkpoints.TrainState` (history included).
            With ``keep="best"`` the model holds the weights of the best validated
            epoch, named by ``state.best``.

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is
                kept).
            Preempted: SIGTERM arrived (the message says which epoch is saved).
        """
        state = state or TrainState()
        if resume_from is not None:
            self._best.load(resume_from, state, self.model)
        with self._sigterm_guard():
            for index, phase in enumerate(phases):
                if index < state.phase_index:
                    continue
                if index > state.phase_index:
                    state.phase_index, state.phase_epoch = index, 0
                    state.phase_best = None
                self._run_phase(phase, index, data_for_phase(phase), state, resume_from,
                                on_epoch_end)
                resume_from = None
        if self.keep == "best" and state.best is not None and self._best.overall is not None:
            self.model.set_weights(self._best.overall)
            if self.verbose:
                which = epoch_in_phase(state.history, state.best["epoch"])
                self.log(f"Restored the weights of {which} (val_accuracy "
                         f"{state.best['val_accuracy']:.4f}), the best validated epoch.")
        state.finished = True
        return state

    def assert_fresh(self, model: keras.Model | None = None) -> None:
        """Refuse to train if trainable flags changed since this phase was compiled."""
        model = model or (self._steps.model if self._steps else self.model)
        if self._steps is not None and trainable_signature(model) != self._steps.signature:
            raise StaleTrainableError(
                "Trainable flags changed after the phase was compiled; the compiled step "
                "would train the old set of variables. Change regimes with a new Phase (or "
                "kerastl.set_regime on a compiled model, which recompiles)."
            )

    def prepare_phase(self, phase: Phase, data: PhaseData, *,
                      constant_lr: bool = False) -> UnfreezePlan:
        """Set the phase's regime and compile its optimizer and step.

        Args:
            phase: Phase. What trains.
            data: PhaseData. What it trains on.
            constant_lr: bool. Compile with a constant learning rate (the
                learning-rate range test sets it step by step).

        Returns:
            The :class:`~kerastl.models.freezing.UnfreezePlan` of the phase.
        """
        plan = set_regime(self.model, phase.mode, unfreeze_top=phase.unfreeze_top,
                          unfreeze_blocks=phase.unfreeze_blocks, bn_policy=phase.bn_policy,
                          recompile=False)
        self._compile_phase(phase, data, "constant" if constant_lr else self.schedule)
        return plan

    def fit_probe_phase(self, phase: Phase, data: PhaseData) -> dict[str, float]:
        """Fit a probe phase's head (logistic regression), without history or checkpoint."""
        self.prepare_phase(phase, data)
        callbacks = self._callback_list(phase)
        return probe_epoch(self, phase, data, 0, callbacks)

    # -- phases -------------------------------------------------------------------
    def _compile_phase(self, phase: Phase, data: PhaseData, schedule_kind: str) -> None:
        total = phase.epochs * data.steps_per_epoch
        warmup = int(self.warmup_fraction * total)
        multipliers = None
        trains_base = phase.mode in ("finetune", "full")
        if trains_base and self.block_lr_decay < 1.0:
            multipliers = block_lr_multipliers(self.model, self.block_lr_decay)
        lr = phase.lr if isinstance(phase.lr, (int, float)) else 1e-3  # "auto": found next
        with self.strategy.scope():
            schedule = make_schedule(schedule_kind, lr, total, warmup)
            optimizer = make_optimizer(self.optimizer_name, schedule,
                                       weight_decay=self.weight_decay, momentum=self.momentum,
                                       lr_multipliers=multipliers,
                                       anchor_decay=self.anchor_decay if trains_base else 0.0)
            if self.wrap_optimizer is not None:
                optimizer = self.wrap_optimizer(optimizer)
            optimizer.build(data.model.trainable_variables)
        self.optimizer = optimizer
        self._steps = CompiledSteps(data.model, optimizer, self.strategy, self.loss_fn, self.task,
                             self.class_weights, self.jit_compile,
                             data.steps_per_execution or self.steps_per_execution,
                             self.step_hooks)

    def _run_phase(self, phase, index, data, state, resume_from, on_epoch_end) -> None:
        if resume_from is not None:
            # The checkpoint's weights first: the range test and the optimizer's
            # build (L2-SP anchors) must see the weights this phase starts from.
            restore_weights(resume_from, self.model, None)
        if phase.lr == "auto" and phase.fit == "train":
            phase = self._with_found_lr(phase, index, data, state)
        plan = self.prepare_phase(phase, data)
        if self.verbose:
            what = ("linear probe (logistic regression) on" if phase.fit == "probe"
                    else f"{phase.epochs} epoch(s), lr {phase.lr:g},")
            self.log(f"\nPhase {index + 1} '{phase.name}': {what} {data.description}")
            self.log(str(plan))
        if resume_from is not None:
            # Mid-phase, the optimizer's state too. A checkpoint taken at a phase
            # boundary holds the previous phase's optimizer: this one starts fresh.
            if state.phase_epoch > 0:
                restore_optimizer(resume_from, self.optimizer)
            self._reset_constant_lr(phase)
        for hook in self.step_hooks:
            hook.on_phase_begin(self, phase, index, state)
        callbacks = self._callback_list(phase)
        callbacks.on_train_begin()
        for _ in range(state.phase_epoch, phase.epochs):
            self.assert_fresh()
            for hook in self.step_hooks:
                hook.on_epoch_begin(state.phase_epoch)
            logs = (probe_epoch(self, phase, data, state.epoch, callbacks)
                    if phase.fit == "probe" else
                    self._run_epoch(phase, data, state.epoch, callbacks,
                                    phase_epoch=state.phase_epoch + 1))
            state.epoch += 1
            state.phase_epoch += 1
            state.history.append({"epoch": state.epoch, "phase": phase.name, **logs})
            if all(hook.keeps_epoch() for hook in self.step_hooks):
                self._best.update(self.model, state, phase.name, logs,
                                  counts_for_run=index >= self.final_from_phase)
            stop = self.model.stop_training or self._patience_exhausted(state)
            if state.phase_epoch < phase.epochs and not stop:
                self._checkpoint(state)
            if on_epoch_end is not None:
                on_epoch_end(state)
            if stop:
                self.log(f"Early stopping in phase '{phase.name}' after epoch {state.epoch}.")
                break
        callbacks.on_train_end()
        self._finish_phase(phase, index, state)

    def _with_found_lr(self, phase: Phase, index: int, data: PhaseData,
                       state: TrainState) -> Phase:
        """``lr="auto"``: the range test's suggestion, found once (a resume reuses it)."""
        key = str(index)
        if key not in state.lrs:
            if self.find_lr is None:
                raise ConfigError(f"Phase {phase.name!r} has lr='auto' but this Trainer was "
                                  "given no find_lr; pass find_lr=suggest_lr "
                                  "(kerastl.training.lr_range_test) or a number.")
            self.prepare_phase(phase, data, constant_lr=True)
            state.lrs[key] = self.find_lr(self, data, phase.name)
            if self.verbose:
                self.log(f"Phase {index + 1} '{phase.name}': learning-rate range test "
                         f"suggests {state.lrs[key]:.3g}.")
        return dataclasses.replace(phase, lr=state.lrs[key])

    def step(self, iterator, steps: int = 1) -> np.ndarray:
        """Run ``steps`` compiled train steps; returns (loss sum, examples, correct, total)."""
        return self._steps.train(iterator, tf.constant(steps)).numpy()

    def _finish_phase(self, phase: Phase, index: int, state: TrainState) -> None:
        """End a phase: its best weights (``keep="best"``), then a checkpoint saying so.

        The checkpoint is written after the weights are restored and marks the phase
        finished, so a crash early in the next phase resumes there, from these
        weights. Early stopping ends the phase, not the run.
        """
        if self.keep == "best" and state.phase_best is not None \
                and state.phase_best["epoch"] != state.epoch:
            self._best.restore_phase(self.model, state)
            if self.verbose:
                self.log(f"Phase '{phase.name}' ends with the weights of its best epoch, "
                         f"{epoch_in_phase(state.history, state.phase_best['epoch'])} "
                         f"(val_accuracy {state.phase_best['val_accuracy']:.4f}).")
        for hook in self.step_hooks:  # e.g. pruning: after the restore, before saving
            hook.on_phase_end()
        state.phase_index, state.phase_epoch = index + 1, 0
        state.phase_best = None  # before the checkpoint: a resumed next phase starts afresh
        self.model.stop_training = False
        self._checkpoint(state, force=True)

    def _patience_exhausted(self, state: TrainState) -> bool:
        if not self.early_stopping or state.phase_best is None:
            return False
        return state.epoch - state.phase_best["epoch"] >= self.early_stopping

    def _reset_constant_lr(self, phase: Phase) -> None:
        # Restoring optimizer variables also restores a constant learning rate, which
        # would undo `--resume --lr X`; schedules compute the rate from the step.
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if self.schedule == "constant" and phase.lr is not None:
            optimizer.learning_rate.assign(phase.lr)

    def _callback_list(self, phase: Phase) -> keras.callbacks.CallbackList:
        self.model.stop_training = False
        return keras.callbacks.CallbackList(list(self.callbacks), model=self.model,
                                            epochs=phase.epochs)

    def _run_epoch(self, phase, data, epoch, callbacks, phase_epoch: int) -> dict[str, float]:
        callbacks.on_epoch_begin(epoch)
        started = time.perf_counter()
        for_worker = data.train_for_worker
        iterator = iter(replica_batches(
            self.strategy, lambda: data.train(epoch),
            None if for_worker is None else lambda context: for_worker(epoch, context)))
        # A live bar in a terminal or notebook; one plain line per epoch in a log.
        progbar = None
        if self.verbose and interactive():
            self.log(f"Epoch {phase_epoch}/{phase.epochs} ({phase.name})")
            progbar = keras.utils.Progbar(data.steps_per_epoch, verbose=1,
                                          stateful_metrics=["loss", "accuracy"])
        totals, step = np.zeros(4), 0
        while step < data.steps_per_epoch:
            chunk = min(self._steps.steps_per_execution, data.steps_per_epoch - step)
            totals += self._steps.train(iterator, tf.constant(chunk)).numpy()
            step += chunk
            logs = step_logs(totals)
            if not math.isfinite(logs["loss"]):
                raise NonFiniteLossError(
                    f"Loss became {logs['loss']} in phase '{phase.name}', epoch {epoch + 1}, "
                    f"step {step} at learning rate {self._current_lr():.3g}. The last good "
                    "checkpoint is kept; rerun the same command with --resume and a lower --lr "
                    "(or --precision float32)."
                )
            if progbar is not None:
                progbar.update(step, list(logs.items()), finalize=False)
            if self._stop_requested.is_set() and not self._finish_before_stopping(
                    started, step, data.steps_per_epoch):
                raise Preempted(self._saved_epoch_text(epoch))
        if data.val is not None:
            logs.update(self.evaluate(data.val, model_steps=self._steps,
                                      for_worker=data.val_for_worker))
        logs["lr"] = self._current_lr()
        logs["seconds"] = round(time.perf_counter() - started, 3)
        if progbar is not None:
            progbar.update(data.steps_per_epoch, [(k, v) for k, v in logs.items()
                                                  if k not in ("seconds",)], finalize=True)
        elif self.verbose:
            self.log(epoch_line(phase.name, phase_epoch, phase.epochs, logs))
        callbacks.on_epoch_end(epoch, logs)
        return logs

    def evaluate(self, dataset: tf.data.Dataset, model_steps: CompiledSteps | None = None,
                 for_worker: Callable[[tf.distribute.InputContext], tf.data.Dataset] | None
                 = None) -> dict:
        """Loss and accuracy over a batched dataset read to its end, over replicas
        (each worker reading its own share where ``for_worker`` is given).

        Raises:
            ConfigError: the dataset repeats forever.
            DataError: it holds no examples.
        """
        steps = model_steps or self._steps
        if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
            raise ConfigError(
                "The evaluation dataset is infinite (it repeats); received cardinality "
                "INFINITE. Pass a finite dataset, e.g. dataset.take(n)."
            )
        totals = np.zeros(4)
        # Read to the end, not range(cardinality): after filter() the cardinality is
        # unknown (-2) and nothing would be evaluated. A distributed dataset ends on
        # every replica at once, its last batch split as evenly as it goes.
        for x, y in replica_batches(self.strategy, lambda: dataset, for_worker):
            totals += steps.evaluate(x, y).numpy()
        if totals[1] == 0:
            raise DataError("The evaluation dataset yielded no examples; received an empty "
                            "dataset. Check the validation split.")
        return step_logs(totals, prefix="val_")

    def _current_lr(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate))

    # -- checkpoints ----------------------------------------------------------------
    def _checkpoint(self, state: TrainState, force: bool = False) -> None:
        self._unsaved_epochs += 1
        due = time.monotonic() - self._last_checkpoint >= self.checkpoint_interval
        if self._stop_requested.is_set() or force or due:
            if self.checkpoint_dir is not None and self.is_chief:
                save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, state,
                                best=self._best.to_save(state, self.model))
            self._last_checkpoint = time.monotonic()
            self._unsaved_epochs = 0
        if self._stop_requested.is_set():
            raise Preempted(f"epoch {state.epoch} is checkpointed.")

    def _finish_before_stopping(self, started: float, step: int, steps: int) -> bool:
        """On SIGTERM: finish a short epoch rather than lose unsaved ones."""
        if self._unsaved_epochs == 0 or self.checkpoint_dir is None:
            return False
        remaining = (time.perf_counter() - started) / step * (steps - step)
        return remaining < PREEMPTION_GRACE_SECONDS

    def _saved_epoch_text(self, epoch: int) -> str:
        last = epoch - self._unsaved_epochs
        return (f"epoch {last} is the last checkpointed one." if last > 0
                else "no epoch was checkpointed yet.")

    @contextmanager
    def _sigterm_guard(self):
        """Turn SIGTERM (preemption) into a clean stop at the next step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            self._stop_requested.set()

        previous = signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


# Seconds of work a preempted run may still do to finish its epoch and checkpoint it
# (schedulers give some 30 s between SIGTERM and SIGKILL).
PREEMPTION_GRACE_SECONDS = 10.0

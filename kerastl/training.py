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
``trainable`` without a new phase raises :class:`~kerastl.errors.StaleTrainableError`
instead of silently training the old set (keras#6405).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from . import _backend  # noqa: F401
from .checkpoints import TrainState, restore_weights, save_checkpoint
from .config import Phase
from .errors import ConfigError, DataError, NonFiniteLossError, StaleTrainableError
from .freezing import set_regime, trainable_signature


class Preempted(Exception):
    """SIGTERM arrived; the last completed epoch is checkpointed."""


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
    """

    model: keras.Model
    train: Callable[[int], tf.data.Dataset]
    val: tf.data.Dataset | None
    steps_per_epoch: int
    description: str = ""


# ------------------------------------------------------------------ optimisation
def make_schedule(kind: str, peak_lr: float, total_steps: int, warmup_steps: int = 0):
    """A Keras learning-rate schedule.

    Args:
        kind: str. ``"constant"``, ``"cosine"`` (cosine decay after an optional
            linear warm-up) or ``"onecycle"`` (30 % warm-up from ``peak/25``, then
            cosine decay to ``peak/1e4``, as fastai's ``fit_one_cycle``).
        peak_lr: float. Highest learning rate.
        total_steps: int. Optimizer steps in the phase.
        warmup_steps: int. Linear warm-up steps (cosine only).

    Example:
        >>> float(make_schedule("cosine", 1e-3, 100)(100)) < 1e-5
        True
    """
    total_steps = max(1, int(total_steps))
    schedules = keras.optimizers.schedules
    if kind == "constant":
        return peak_lr
    if kind == "cosine":
        warmup = min(int(warmup_steps), total_steps - 1)
        if warmup <= 0:
            return schedules.CosineDecay(peak_lr, decay_steps=total_steps, alpha=0.0)
        return schedules.CosineDecay(
            0.0, decay_steps=total_steps - warmup, warmup_target=peak_lr,
            warmup_steps=warmup, alpha=0.0,
        )
    if kind == "onecycle":
        warmup = max(1, int(0.3 * total_steps))
        return schedules.CosineDecay(
            peak_lr / 25.0, decay_steps=max(1, total_steps - warmup), warmup_target=peak_lr,
            warmup_steps=warmup, alpha=1e-4,
        )
    raise ConfigError(f"schedule must be constant, cosine or onecycle; received {kind!r}.")


def make_optimizer(
    name: str, learning_rate, *, weight_decay: float = 0.0, momentum: float = 0.9
) -> keras.optimizers.Optimizer:
    """Adam, AdamW (decoupled weight decay) or SGD with momentum."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=momentum, nesterov=True,
            weight_decay=weight_decay or None,
        )
    raise ConfigError(f"optimizer must be adam, adamw or sgd; received {name!r}.")


def make_loss(task: str, label_smoothing: float = 0.0) -> Callable:
    """Per-example loss ``(y_true, y_pred) -> (batch,)`` for the task."""
    if task == "multiclass":
        loss = keras.losses.CategoricalCrossentropy(
            label_smoothing=label_smoothing, reduction=None
        )

        def multiclass(y_true, y_pred):
            depth = tf.shape(y_pred)[-1]
            one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), depth)
            return loss(one_hot, y_pred)

        return multiclass
    binary = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=None)
    if task == "binary":
        return lambda y_true, y_pred: binary(
            tf.reshape(tf.cast(y_true, y_pred.dtype), [-1, 1]), y_pred
        )
    return lambda y_true, y_pred: binary(tf.cast(y_true, y_pred.dtype), y_pred)


def correct_count(task: str, y_true, y_pred):
    """Correctly predicted examples in a batch, and the number of examples.

    The ``accuracy`` of :func:`kerastl.reports.classification_metrics`: the arg-max
    class, or ``sigmoid >= 0.5``; a multilabel example counts when every label is
    right (exact match), so history and ``metrics.json`` report the same number.
    """
    if task == "multiclass":
        hits = tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                        tf.cast(tf.reshape(y_true, [-1]), tf.int32))
    elif task == "binary":
        hits = tf.equal(tf.reshape(y_pred, [-1]) >= 0.5,
                        tf.reshape(tf.cast(y_true, tf.float32), [-1]) > 0.5)
    else:
        hits = tf.reduce_all(tf.equal(y_pred >= 0.5, tf.cast(y_true, tf.float32) > 0.5), -1)
    hits = tf.cast(hits, tf.float32)
    return tf.reduce_sum(hits), tf.cast(tf.size(hits), tf.float32)


def evaluation_losses(task: str, y_true, y_prob, *, label_smoothing: float = 0.0,
                      class_weights: Sequence[float] | None = None) -> dict:
    """``loss`` as the trainer reports it, plain ``cross_entropy``, and their definitions.

    ``loss`` is the training objective: the mean per-example loss with the run's
    label smoothing and class weights, which is what ``history.csv``'s ``loss`` and
    ``val_loss`` are. ``cross_entropy`` has neither, to compare runs that differ in them.

    Example:
        >>> out = evaluation_losses("binary", [0, 1], [[0.2], [0.9]], label_smoothing=0.1)
        >>> round(out["cross_entropy"], 4), out["loss"] > out["cross_entropy"]
        (0.1643, True)
    """
    y_prob = tf.constant(np.asarray(y_prob, dtype=np.float32))
    per_example = np.asarray(make_loss(task, label_smoothing)(y_true, y_prob))
    weighting = ""
    if class_weights is not None:
        ids = np.asarray(y_true).reshape(-1).astype(np.int64)
        per_example = per_example * np.asarray(class_weights)[ids]
        weighting = ", weighted by class_weight"
    cross_entropy = np.asarray(make_loss(task)(y_true, y_prob))
    kind = "categorical" if task == "multiclass" else "binary"
    every = " (every label right)" if task == "multilabel" else ""
    return {
        "loss": float(np.mean(per_example)),
        "cross_entropy": float(np.mean(cross_entropy)),
        "definitions": {
            "loss": f"mean {kind} cross-entropy with label_smoothing={label_smoothing:g}"
                    f"{weighting}: the training objective, as history.csv's loss and val_loss",
            "cross_entropy": f"mean {kind} cross-entropy, no label smoothing or class weights",
            "accuracy": f"share of examples predicted right{every}, as history.csv's accuracy",
        },
    }


# ------------------------------------------------------------------ the step
class _Steps:
    """Distributed train/eval functions for one phase (rebuilt every phase)."""

    def __init__(self, model, optimizer, strategy, loss_fn, task, class_weights, jit_compile,
                 steps_per_execution=1):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.loss_fn, self.task = loss_fn, task
        self.class_weights = (
            None if class_weights is None else tf.constant(class_weights, tf.float32)
        )
        self.signature = trainable_signature(model)
        # XLA is opt-in: on CPU it is several times slower (measured ~8x here).
        # One step per call unless asked: the step loop costs seconds of autograph
        # tracing, which is most of a cached-feature run's overhead.
        train = self._train_one if steps_per_execution == 1 else self._train
        self.train = tf.function(train, jit_compile=jit_compile)
        # Called once per batch: the last, smaller batch would retrace it every epoch.
        self.evaluate = tf.function(self._evaluate, jit_compile=jit_compile,
                                    reduce_retracing=True)

    def _weights(self, y):
        if self.class_weights is None:
            return None
        return tf.gather(self.class_weights, tf.cast(tf.reshape(y, [-1]), tf.int32))

    def _replica_train(self, x, y):
        weights = self._weights(y)
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            per_example = self.loss_fn(y, y_pred)
            loss = tf.nn.compute_average_loss(per_example, sample_weight=weights,
                                              global_batch_size=self._global_count(y))
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled = self.optimizer.scale_loss(loss)
        variables = self.model.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._sums(per_example, weights, y, y_pred)

    def _global_count(self, y):
        """Examples in this step over all replicas.

        Without it ``compute_average_loss`` divides by this replica's batch size times
        the replica count, which is wrong on a last batch split unevenly (3 examples
        as 2 + 1 would be divided by 4 and by 2 instead of 3).
        """
        local = tf.shape(y)[0]
        if self.strategy.num_replicas_in_sync == 1:
            return local
        context = tf.distribute.get_replica_context()
        # Summed as float32, which every device's all-reduce supports (TPU included).
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local, tf.float32))
        return tf.maximum(tf.cast(total, tf.int32), 1)

    def _replica_eval(self, x, y):
        # Class weights included: val_loss has the definition of the training loss.
        y_pred = self.model(x, training=False)
        return self._sums(self.loss_fn(y, y_pred), self._weights(y), y, y_pred)

    def _sums(self, per_example, weights, y, y_pred):
        per_example = tf.cast(per_example, tf.float32)
        if weights is not None:
            per_example = per_example * weights
        correct, total = correct_count(self.task, y, y_pred)
        n = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), n, correct, total])

    def _reduce(self, per_replica):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _train(self, iterator, steps):
        # Several steps per call (steps_per_execution) keep a TPU busy between host
        # round trips; the sums are reduced once per step, as Keras does.
        totals = tf.zeros([4])
        for _ in tf.range(steps):
            x, y = next(iterator)
            totals += self._reduce(self.strategy.run(self._replica_train, args=(x, y)))
        return totals

    def _train_one(self, iterator, steps):
        del steps  # always 1
        x, y = next(iterator)
        return self._reduce(self.strategy.run(self._replica_train, args=(x, y)))

    def _evaluate(self, x, y):
        return self._reduce(self.strategy.run(self._replica_eval, args=(x, y)))


def _distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    if strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1:
        return dataset  # the default strategy: nothing to shard or rebatch
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _logs(sums: np.ndarray, prefix: str = "") -> dict[str, float]:
    loss_sum, n, correct, total = (float(v) for v in sums)
    return {f"{prefix}loss": loss_sum / max(n, 1.0), f"{prefix}accuracy": correct / max(total, 1.0)}


# ------------------------------------------------------------------ the trainer
class Trainer:
    """Runs phases with one distributed step, checkpoints every epoch, resumes.

    Args:
        model: keras.Model. A kerastl model (built inside ``strategy.scope()``).
        strategy: tf.distribute.Strategy. From :mod:`kerastl.runtime`.
        task: str. ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        optimizer: str. ``"adam"``, ``"adamw"`` or ``"sgd"``.
        schedule: str. ``"constant"``, ``"cosine"`` or ``"onecycle"``.
        weight_decay, momentum, label_smoothing: optimisation knobs.
        warmup_fraction: float. Share of each phase's steps spent warming the
            learning rate up linearly (cosine schedule).
        class_weights: sequence of float, optional. Loss weight per class
            (multiclass and binary tasks), in the training and the validation loss.
        early_stopping: int, optional. Patience (epochs, on ``val_loss``) within a
            phase; the best weights of the phase are restored.
        callbacks: sequence of keras callbacks. Receive the usual epoch hooks.
        checkpoint_dir: path, optional. Where epoch checkpoints go (chief only).
        is_chief: bool. Only the chief writes checkpoints.
        wrap_optimizer: callable, optional. E.g. loss scaling for ``mixed_float16``.
        jit_compile: bool. XLA-compile the step (off on CPU, where it is slower).
        steps_per_execution: int. Train steps per call of the compiled function.
        verbose: int. 0 silent, 1 progress bar, 2 one line per epoch.

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
        early_stopping: int | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        checkpoint_dir: str | Path | None = None,
        is_chief: bool = True,
        wrap_optimizer: Callable | None = None,
        jit_compile: bool = False,
        steps_per_execution: int = 1,
        verbose: int = 1,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model, self.strategy, self.task = model, strategy, task
        self.optimizer_name, self.schedule = optimizer, schedule
        self.weight_decay, self.momentum = weight_decay, momentum
        self.warmup_fraction = warmup_fraction
        self.loss_fn = make_loss(task, label_smoothing)
        if class_weights is not None and task == "multilabel":
            raise ConfigError(
                "class_weights weight each example by its class, which a multilabel example "
                f"does not have; received task='multilabel', class_weights={class_weights!r}. "
                "Use class weights with multiclass or binary tasks."
            )
        self.class_weights = class_weights
        self.early_stopping = early_stopping
        self.callbacks = list(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.is_chief = is_chief
        self.wrap_optimizer = wrap_optimizer
        self.jit_compile = jit_compile
        self.steps_per_execution = max(1, int(steps_per_execution))
        self.verbose = verbose
        self.log = log
        self.optimizer = None
        self._steps: _Steps | None = None
        self._stop_requested = threading.Event()

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
            The final :class:`~kerastl.checkpoints.TrainState` (history included).

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is
                kept).
            Preempted: SIGTERM arrived (the last completed epoch is checkpointed).
        """
        state = state or TrainState()
        with self._sigterm_guard():
            for index, phase in enumerate(phases):
                if index < state.phase_index:
                    continue
                if index > state.phase_index:
                    state.phase_index, state.phase_epoch = index, 0
                self._run_phase(phase, index, data_for_phase(phase), state, resume_from,
                                on_epoch_end)
                resume_from = None
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

    # -- phases -------------------------------------------------------------------
    def _compile_phase(self, phase: Phase, data: PhaseData) -> None:
        total = phase.epochs * data.steps_per_epoch
        warmup = int(self.warmup_fraction * total)
        with self.strategy.scope():
            schedule = make_schedule(self.schedule, phase.lr, total, warmup)
            optimizer = make_optimizer(self.optimizer_name, schedule,
                                       weight_decay=self.weight_decay, momentum=self.momentum)
            if self.wrap_optimizer is not None:
                optimizer = self.wrap_optimizer(optimizer)
            optimizer.build(data.model.trainable_variables)
        self.optimizer = optimizer
        self._steps = _Steps(data.model, optimizer, self.strategy, self.loss_fn, self.task,
                             self.class_weights, self.jit_compile, self.steps_per_execution)

    def _run_phase(self, phase, index, data, state, resume_from, on_epoch_end) -> None:
        plan = set_regime(self.model, phase.mode, unfreeze_top=phase.unfreeze_top,
                          unfreeze_blocks=phase.unfreeze_blocks, bn_policy=phase.bn_policy,
                          recompile=False)
        if self.verbose:
            self.log(f"\nPhase {index + 1} '{phase.name}': {phase.epochs} epoch(s), "
                     f"lr {phase.lr:g}, {data.description}")
            self.log(str(plan))
        self._compile_phase(phase, data)
        if resume_from is not None:
            restore_weights(resume_from, self.model, self.optimizer)
        callbacks = self._callback_list(phase)
        callbacks.on_train_begin()
        for _ in range(state.phase_epoch, phase.epochs):
            self.assert_fresh()
            logs = self._run_epoch(phase, data, state.epoch, callbacks)
            state.epoch += 1
            state.phase_epoch += 1
            state.history.append({"epoch": state.epoch, "phase": phase.name, **logs})
            self._checkpoint(state)
            if on_epoch_end is not None:
                on_epoch_end(state)
            if self.model.stop_training:
                self.log(f"Early stopping in phase '{phase.name}' after epoch {state.epoch}.")
                break
        callbacks.on_train_end()
        # Early stopping ends the phase, not the run: the remaining epochs of this phase
        # are skipped and the next phase starts from the restored best weights.
        state.phase_epoch = phase.epochs
        self.model.stop_training = False

    def _callback_list(self, phase: Phase) -> keras.callbacks.CallbackList:
        callbacks = list(self.callbacks)
        if self.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.early_stopping, restore_best_weights=True,
                verbose=0,
            ))
        self.model.stop_training = False
        return keras.callbacks.CallbackList(callbacks, model=self.model, epochs=phase.epochs)

    def _run_epoch(self, phase, data, epoch, callbacks) -> dict[str, float]:
        callbacks.on_epoch_begin(epoch)
        started = time.perf_counter()
        iterator = iter(_distribute(self.strategy, data.train(epoch)))
        progbar = (keras.utils.Progbar(data.steps_per_epoch, verbose=self.verbose,
                                       stateful_metrics=["loss", "accuracy"])
                   if self.verbose else None)
        if progbar is not None:
            self.log(f"Epoch {epoch + 1} ({phase.name})")
        totals, step = np.zeros(4), 0
        while step < data.steps_per_epoch:
            chunk = min(self.steps_per_execution, data.steps_per_epoch - step)
            totals += self._steps.train(iterator, tf.constant(chunk)).numpy()
            step += chunk
            logs = _logs(totals)
            if not math.isfinite(logs["loss"]):
                raise NonFiniteLossError(
                    f"Loss became {logs['loss']} in phase '{phase.name}', epoch {epoch + 1}, "
                    f"step {step} at learning rate {self._current_lr():.3g}. The last good "
                    "checkpoint is kept; rerun the same command with --resume and a lower --lr "
                    "(or --precision float32)."
                )
            if progbar is not None:
                progbar.update(step, list(logs.items()), finalize=False)
            if self._stop_requested.is_set():
                raise Preempted(epoch)
        if data.val is not None:
            logs.update(self.evaluate(data.val, model_steps=self._steps))
        logs["lr"] = self._current_lr()
        logs["seconds"] = round(time.perf_counter() - started, 3)
        if progbar is not None:
            progbar.update(data.steps_per_epoch, [(k, v) for k, v in logs.items()
                                                  if k not in ("seconds",)], finalize=True)
        callbacks.on_epoch_end(epoch, logs)
        return logs

    def evaluate(self, dataset: tf.data.Dataset, model_steps: _Steps | None = None) -> dict:
        """Loss and accuracy over a batched dataset read to its end, over replicas.

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
        for x, y in _distribute(self.strategy, dataset):
            totals += steps.evaluate(x, y).numpy()
        if totals[1] == 0:
            raise DataError("The evaluation dataset yielded no examples; received an empty "
                            "dataset. Check the validation split.")
        return _logs(totals, prefix="val_")

    def _current_lr(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate))

    def _checkpoint(self, state: TrainState) -> None:
        if self.checkpoint_dir is not None and self.is_chief:
            save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, state)

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


def predict(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels over a batched ``(x, y)`` dataset, on this process."""
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    outputs, labels = [], []
    for x, y in dataset:
        outputs.append(np.asarray(call(x)))
        labels.append(np.asarray(y))
    return np.concatenate(outputs), np.concatenate(labels)

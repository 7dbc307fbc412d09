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
from dataclasses import dataclass
from pathlib import Path

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..config.choices import CLASS_WEIGHTS, KEEP_WEIGHTS
from ..config.phases import Phase
from ..core import backend as _backend  # noqa: F401
from ..core.console import batches_in, epoch_in_phase, epoch_line, interactive, progress
from ..core.errors import ConfigError, DataError, NonFiniteLossError, StaleTrainableError
from ..models.freezing import UnfreezePlan, set_regime, trainable_signature
from ..models.linear_probe import fit_probe
from .checkpoints import (
    MODEL_WEIGHTS_FILE,
    TrainState,
    read_best_weights,
    restore_optimizer,
    restore_weights,
    save_checkpoint,
)
from .optimizers import block_lr_multipliers, make_optimizer, make_schedule

# What a run ends with: the weights of its best validated epoch, or the last ones.


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
    """

    model: keras.Model
    train: Callable[[int], tf.data.Dataset]
    val: tf.data.Dataset | None
    steps_per_epoch: int
    description: str = ""
    arrays: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
    steps_per_execution: int | None = None
    train_for_worker: Callable[[int, tf.distribute.InputContext], tf.data.Dataset] | None = None


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


# ------------------------------------------------------------------ losses
def class_weights_for(kind: str, task: str, labels: np.ndarray,
                      n_classes: int) -> list[float] | None:
    """Per-class loss weights: None for ``"none"``, inverse frequency for ``"balanced"``.

    Multiclass and binary tasks (binary 0/1 labels are class ids); multilabel
    examples have no single class and are refused.

    Example:
        >>> class_weights_for("balanced", "multiclass", np.array([0, 0, 0, 1]), 2)
        [0.6666666666666666, 2.0]
    """
    if kind not in CLASS_WEIGHTS:
        raise ConfigError(f"class_weight must be one of {CLASS_WEIGHTS}; received "
                          f"class_weight={kind!r}.")
    if kind == "none":
        return None
    if task == "multilabel":
        raise ConfigError(
            "class_weight='balanced' weights each example by its class, which a multilabel "
            "example does not have; received task='multilabel', class_weight='balanced'. "
            "Use --class-weight none."
        )
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights.tolist()


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

    The ``accuracy`` of :func:`kerastl.outputs.reports.classification_metrics`: the arg-max
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
                 steps_per_execution=1, hooks=()):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.hooks = list(hooks)
        self.loss_fn, self.task = loss_fn, task
        self.class_weights = (
            None if class_weights is None else tf.constant(class_weights, tf.float32)
        )
        self.signature = trainable_signature(model)
        # XLA is opt-in: on CPU it is several times slower (measured ~8x here).
        self.steps_per_execution = steps_per_execution
        # No autograph: Keras layers need none (they also trace under JAX), and
        # converting the model's Python costs ~0.7 s per trace (measured, issue 11).
        # Step hooks are user code, which may need it.
        autograph = bool(self.hooks)
        train = self._train_one if steps_per_execution == 1 else self._train
        self.train = tf.function(train, jit_compile=jit_compile, autograph=autograph)
        # Called once per batch: the last, smaller batch would retrace it every epoch.
        self.evaluate = tf.function(self._evaluate, jit_compile=jit_compile,
                                    reduce_retracing=True, autograph=autograph)

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
        # round trips; the sums are reduced once per step, as Keras does. A while_loop
        # written out, so the function needs no autograph.
        def step(i, totals):
            x, y = next(iterator)
            totals += self._reduce(self.strategy.run(self._replica_train, args=(x, y)))
            self._after_step()
            return i + 1, totals

        return tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), tf.zeros([4])))[1]

    def _train_one(self, iterator, steps):
        del steps  # always 1
        x, y = next(iterator)
        sums = self._reduce(self.strategy.run(self._replica_train, args=(x, y)))
        self._after_step()
        return sums

    def _after_step(self):
        # Cross-replica context: the optimizer step of every replica is done, so a
        # hook's assignment to a mirrored variable reaches all of them.
        for hook in self.hooks:
            hook.after_step()

    def _evaluate(self, x, y):
        return self._reduce(self.strategy.run(self._replica_eval, args=(x, y)))


def distribute_dataset(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """``dataset`` as the strategy's replicas read it (unchanged on one device)."""
    if strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1:
        return dataset  # the default strategy: nothing to shard or rebatch
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def reads_per_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether each worker (or TPU host) should build its own input pipeline.

    Under ``MultiWorkerMirroredStrategy`` and ``TPUStrategy`` a dataset handed to
    ``experimental_distribute_dataset`` is read whole by every worker (auto-sharding
    keeps every n-th element only after decoding it); ``distribute_datasets_from_function``
    lets each read its own share.
    """
    return isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                                 tf.distribute.TPUStrategy))


def _logs(sums: np.ndarray, prefix: str = "") -> dict[str, float]:
    loss_sum, n, correct, total = (float(v) for v in sums)
    return {f"{prefix}loss": loss_sum / max(n, 1.0), f"{prefix}accuracy": correct / max(total, 1.0)}


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
        self._steps: _Steps | None = None
        self._stop_requested = threading.Event()
        self._best = _BestWeights()
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
        return self._probe_epoch(phase, data, 0, callbacks)

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
        self._steps = _Steps(data.model, optimizer, self.strategy, self.loss_fn, self.task,
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
            logs = (self._probe_epoch(phase, data, state.epoch, callbacks)
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

    def _probe_epoch(self, phase, data, epoch, callbacks) -> dict[str, float]:
        """A probe phase's one epoch: logistic regression on cached features."""
        callbacks.on_epoch_begin(epoch)
        started = time.perf_counter()
        if data.arrays is None:
            raise ConfigError(f"Phase {phase.name!r} is a probe, which needs cached features; "
                              "this phase trains on images (--feature-cache off?).")
        features, labels = data.arrays()
        facts = fit_probe(data.model, features, labels, task=self.task,
                          class_weight=self.class_weight, seed=self.seed,
                          label_smoothing=self.label_smoothing)
        self.probe_facts = facts
        train = self.evaluate(data.train(epoch))
        logs = {key[len("val_"):]: value for key, value in train.items()}
        if data.val is not None:
            logs.update(self.evaluate(data.val))
        logs["lr"] = 0.0
        logs["seconds"] = round(time.perf_counter() - started, 3)
        if self.verbose:
            cv = ("" if facts["cv_accuracy"] is None
                  else f", cross-validated accuracy {facts['cv_accuracy']:.4f}")
            self.log(f"Linear probe ({phase.name}): logistic regression C={facts['C']:g}"
                     f"{cv}; " + " - ".join(f"{k} {v:.4f}" for k, v in logs.items()
                                            if k not in ("seconds", "lr")))
        callbacks.on_epoch_end(epoch, logs)
        return logs

    def _run_epoch(self, phase, data, epoch, callbacks, phase_epoch: int) -> dict[str, float]:
        callbacks.on_epoch_begin(epoch)
        started = time.perf_counter()
        if data.train_for_worker is not None and reads_per_worker(self.strategy):
            iterator = iter(self.strategy.distribute_datasets_from_function(
                lambda context: data.train_for_worker(epoch, context)))
        else:
            iterator = iter(distribute_dataset(self.strategy, data.train(epoch)))
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
            if self._stop_requested.is_set() and not self._finish_before_stopping(
                    started, step, data.steps_per_epoch):
                raise Preempted(self._saved_epoch_text(epoch))
        if data.val is not None:
            logs.update(self.evaluate(data.val, model_steps=self._steps))
        logs["lr"] = self._current_lr()
        logs["seconds"] = round(time.perf_counter() - started, 3)
        if progbar is not None:
            progbar.update(data.steps_per_epoch, [(k, v) for k, v in logs.items()
                                                  if k not in ("seconds",)], finalize=True)
        elif self.verbose:
            self.log(epoch_line(phase.name, phase_epoch, phase.epochs, logs))
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
        for x, y in distribute_dataset(self.strategy, dataset):
            totals += steps.evaluate(x, y).numpy()
        if totals[1] == 0:
            raise DataError("The evaluation dataset yielded no examples; received an empty "
                            "dataset. Check the validation split.")
        return _logs(totals, prefix="val_")

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


class _BestWeights:
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


def predict(model: keras.Model, dataset: tf.data.Dataset,
            label: str = "Predicting") -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels over a batched ``(x, y)`` dataset, on this process.

    A progress bar (``label``) is drawn where a person watches the output live.
    """
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                       autograph=False)
    outputs, labels = [], []
    for x, y in progress(dataset, total=batches_in(dataset), label=label):
        outputs.append(np.asarray(call(x)))
        labels.append(np.asarray(y))
    return np.concatenate(outputs), np.concatenate(labels)

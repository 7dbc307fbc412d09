"""The compiled, distributed train and evaluation steps: one for every strategy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf  # noqa: E402

from ..core import backend as _backend  # noqa: F401
from ..models.freezing import trainable_signature
from .losses import correct_count


# ------------------------------------------------------------------ the step
class CompiledSteps:
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


def replica_batches(strategy: tf.distribute.Strategy,
                    dataset: Callable[[], tf.data.Dataset],
                    for_worker: Callable[[tf.distribute.InputContext], tf.data.Dataset] | None
                    = None):
    """The batches the replicas read: ``dataset()`` distributed, or, with several
    workers or a TPU and a ``for_worker`` function, each input pipeline's own share."""
    if for_worker is not None and reads_per_worker(strategy):
        return strategy.distribute_datasets_from_function(for_worker)
    return distribute_dataset(strategy, dataset())


def reads_per_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether each worker (or TPU host) should build its own input pipeline.

    Under ``MultiWorkerMirroredStrategy`` and ``TPUStrategy`` a dataset handed to
    ``experimental_distribute_dataset`` is read whole by every worker (auto-sharding
    keeps every n-th element only after decoding it); ``distribute_datasets_from_function``
    lets each read its own share.
    """
    return isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                                 tf.distribute.TPUStrategy))


def step_logs(sums: np.ndarray, prefix: str = "") -> dict[str, float]:
    loss_sum, n, correct, total = (float(v) for v in sums)
    return {f"{prefix}loss": loss_sum / max(n, 1.0), f"{prefix}accuracy": correct / max(total, 1.0)}

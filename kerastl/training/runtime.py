"""Runtime: which distribution strategy and which mixed precision policy to use.

This module only *chooses and creates* things: a ``tf.distribute.Strategy``, a
Keras dtype policy, batch sizes and compile options. Training itself happens in
``kerastl.training.trainer`` (Keras 3 ``model.fit`` fails under
``MultiWorkerMirroredStrategy``, keras-team/keras#20585, so kerastl has its own
distributed train step).

Auto-selection looks only at a :class:`DeviceFacts` record, so every decision can
be tested with made-up hardware:

* strategy: ``tpu`` if a TPU is attached, ``multiworker`` if ``TF_CONFIG`` names
  more than one worker, ``mirrored`` with more than one GPU, else ``default``.
* precision: ``mixed_float16`` when every GPU has compute capability >= 7.0
  (Tensor Cores), ``mixed_bfloat16`` on TPUs and on CPUs with ``avx512_bf16`` or
  ``amx_bf16`` (unless oneDNN is turned off or capped below its bfloat16 kernels, see
  :data:`ONEDNN_ISAS_WITHOUT_BF16`, or the backbone is a depthwise-separable network,
  see :data:`CPU_FLOAT32_FAMILIES`), else ``float32``.
* XLA (``jit_compile``): on for GPU/TPU, off on CPU where it is several times
  slower than the oneDNN kernels.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras  # noqa: E402
import tensorflow as tf

from ..config.choices import CPU_ONE_THREAD_MAX_SIDE, JIT_CHOICES, STRATEGIES
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError, check_int
from ..models.backbones import Backbone
from .device_facts import DeviceFacts, chief_and_index, read_tf_config
from .precision import CPU_FLOAT32_FAMILIES, backbone_family, precision_and_reason
from .strategies import check_choice, make_strategy, tpu_master

BATCH_SIZE_MEANINGS = ("per_replica", "global")
LR_SCALING_RULES = ("linear", "sqrt", "none")

# Depthwise-separable backbones (the families above) on inputs up to this side train
# faster on CPU with ONE intra-op thread: their many small ops (depthwise convolutions,
# BatchNorm, activations, squeeze-excite) are too little work to split between cores,
# and the pool's hand-offs and spinning cost more than the second core gives; with one
# intra-op thread the other cores still run independent ops (inter-op pool) and tf.data.
# Dense backbones and large inputs split well and keep TensorFlow's default, and so do
# frozen runs, which are one forward pass (EfficientNetB0 extracts 0.79x as fast on one
# thread). MEASURED (benchmarks/results/cores_threads.json, kerastl's training step,
# each in its own process, images/s with intra_op=1 over the default): MobileNetV2
# a=0.35 1.572 at 32, 1.176 at 64, 1.161 at 96; MobileNetV3Small a=0.75 at 64 1.424;
# EfficientNetB0 at 32 1.257; but ResNet50 at 32 1.022, VGG16 at 32 0.821 and
# MobileNetV2 at 224 0.836.
CPU_ONE_THREAD_FAMILIES = CPU_FLOAT32_FAMILIES
# A TPU step is cheap compared with the host round-trip; running many steps per
# tf.function call keeps the TPU busy.
TPU_STEPS_PER_EXECUTION = 32


def choose_strategy_name(requested: str, facts: DeviceFacts) -> str:
    """Resolve ``"auto"`` to a concrete strategy name; validate anything else.

    Args:
        requested: str. One of ``STRATEGIES``.
        facts: DeviceFacts. The hardware to decide for.

    Returns:
        ``"tpu"`` with a TPU, ``"multiworker"`` with more than one worker in
        ``TF_CONFIG``, ``"mirrored"`` with more than one GPU, else ``"default"``.

    Example:
        >>> choose_strategy_name("auto", DeviceFacts(gpus=((8, 0), (8, 0))))
        'mirrored'
    """
    check_choice("strategy", requested, STRATEGIES)
    if requested != "auto":
        return requested
    if facts.tpu:
        return "tpu"
    if facts.n_workers > 1:
        return "multiworker"
    if len(facts.gpus) > 1:
        return "mirrored"
    return "default"


@dataclass
class Runtime:
    """Everything the training loop needs to know about where it runs.

    Attributes:
        strategy: tf.distribute.Strategy. Build and compile the model in its scope.
        strategy_name: str. ``"default"``, ``"mirrored"``, ``"multiworker"``, ``"tpu"``.
        precision: str. The Keras global dtype policy now in effect.
        replicas: int. ``strategy.num_replicas_in_sync``.
        per_replica_batch: int. Examples each replica sees per step.
        global_batch: int. ``per_replica_batch * replicas``; batch tf.data with it.
        jit_compile: bool. Pass to ``model.compile``.
        steps_per_execution: int. Pass to ``model.compile``.
        drop_remainder: bool. Pass to ``Dataset.batch`` (TPUs need static shapes).
        is_chief: bool. Whether this process writes outputs.
        worker_index: int. Task index in ``TF_CONFIG`` (0 without it).
        precision_reason: str. Why this precision was chosen.
        jit_reason: str. Why XLA is on or off.
        tpu_address: str. Master of a TPU strategy (``""`` on a TPU VM and off TPU).

    Example:
        >>> runtime = setup_runtime("default", "float32", batch_size=8)
        >>> runtime.global_batch
        8
    """

    strategy: tf.distribute.Strategy
    strategy_name: str
    precision: str
    replicas: int
    per_replica_batch: int
    global_batch: int
    jit_compile: bool
    steps_per_execution: int
    drop_remainder: bool
    is_chief: bool
    worker_index: int
    precision_reason: str = ""
    jit_reason: str = ""
    tpu_address: str = ""
    intra_op_threads: int = 0
    threads_reason: str = ""

    def summary(self) -> str:
        """One short console line; :meth:`describe` (saved in run.json) says why.

        Example (the line ends with the intra-op threads where a run in this process
        has set them):
            >>> print(setup_runtime("default", "float32", batch_size=8).summary())
            ... # doctest: +ELLIPSIS
            Runtime: strategy default, 1 replica, global batch 8, float32, XLA off...
        """
        replicas = f"{self.replicas} replica" + ("s" if self.replicas != 1 else "")
        worker = f", worker {self.worker_index}" if self.strategy_name == "multiworker" else ""
        threads = (f", {self.intra_op_threads} intra-op thread"
                   + ("s" if self.intra_op_threads != 1 else "")
                   if self.intra_op_threads else "")
        return (f"Runtime: strategy {self.strategy_name}, {replicas}, global batch "
                f"{self.global_batch}, {self.precision}, XLA "
                f"{'on' if self.jit_compile else 'off'}{threads}{worker}")

    def describe(self) -> str:
        """One paragraph saying what runs where, and why.

        Example:
            >>> print(setup_runtime("default", "float32", batch_size=8).describe())
            ... # doctest: +ELLIPSIS
            Strategy 'default' with 1 replica(s); global batch 8 = 8 per replica x 1...
        """
        role = "chief" if self.is_chief else "non-chief"
        return (
            f"Strategy {self.strategy_name!r} with {self.replicas} replica(s); global batch "
            f"{self.global_batch} = {self.per_replica_batch} per replica x {self.replicas} "
            f"replica(s). Precision {self.precision} ({self.precision_reason}). XLA "
            f"jit_compile {'on' if self.jit_compile else 'off'} ({self.jit_reason}). "
            f"steps_per_execution={self.steps_per_execution}, "
            f"drop_remainder={self.drop_remainder}; this process is worker "
            f"{self.worker_index} ({role})."
            + (f" Intra-op threads: {self.threads_reason}." if self.threads_reason else "")
        )


def setup_runtime(
    strategy: str = "auto",
    precision: str = "auto",
    *,
    batch_size: int,
    batch_size_is: str = "per_replica",
    jit_compile: bool | str = "auto",
    steps_per_execution: int | None = None,
    facts: DeviceFacts | None = None,
    backbone: Backbone | str | None = None,
    intra_op_threads: int | str = 0,
    image_size: int | None = None,
    trains_base: bool = True,
) -> Runtime:
    """Choose and create the strategy, set the global dtype policy, size the batch.

    Call this before building any model: the Keras dtype policy is read when a
    layer is created, and the model must be built inside ``runtime.strategy.scope()``.

    Args:
        strategy: str. One of ``STRATEGIES``. Defaults to ``"auto"``.
        precision: str. One of ``PRECISIONS``. Defaults to ``"auto"``.
        batch_size: int. Batch size, per replica or global (see ``batch_size_is``).
        batch_size_is: str. ``"per_replica"`` or ``"global"`` (then it must divide
            evenly by the replica count). Defaults to ``"per_replica"``.
        jit_compile: bool, ``"on"``, ``"off"`` or ``"auto"``. ``"auto"`` is True on
            GPU/TPU and False on CPU, where XLA is several times slower. Defaults to
            ``"auto"``.
        steps_per_execution: int or None. None means 32 on TPU, else 1.
        facts: DeviceFacts or None. None detects this machine.
        backbone: Backbone, str or None. The backbone to be built (record or name); ``"auto"``
            precision on CPU depends on it (see :func:`choose_precision`).
        intra_op_threads: int or ``"auto"``. TensorFlow's intra-op thread pool; 0
            leaves TensorFlow's default (every core); ``"auto"`` picks by
            ``image_size`` on CPU (see :func:`choose_intra_op_threads`). It can only
            change before TensorFlow starts; after that the reason says so.
        image_size: int or None. Input side, for ``intra_op_threads="auto"``.
        trains_base: bool. Whether the run trains the backbone (not ``mode="frozen"``),
            for ``intra_op_threads="auto"``.

    Returns:
        A :class:`Runtime`.

    Raises:
        ConfigError: for any value outside the allowed choices.

    Example:
        >>> runtime = setup_runtime("default", "float32", batch_size=16)
        >>> runtime.replicas, runtime.global_batch, runtime.jit_compile
        (1, 16, False)
    """
    check_choice("batch_size_is", batch_size_is, BATCH_SIZE_MEANINGS)
    check_int("batch_size", batch_size)
    if steps_per_execution is not None:
        check_int("steps_per_execution", steps_per_execution)
    jit_compile = {"on": True, "off": False}.get(jit_compile, jit_compile)
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ConfigError(f"jit_compile must be True, False or one of {JIT_CHOICES}; received "
                          f"jit_compile={jit_compile!r}.")
    facts = facts if facts is not None else DeviceFacts.detect()
    strategy_name = choose_strategy_name(strategy, facts)
    precision, precision_reason = precision_and_reason(precision, facts, strategy_name,
                                                        backbone)
    # Before the strategy: creating it starts TensorFlow, which fixes its thread pools.
    threads, threads_reason = apply_intra_op_threads(
        *choose_intra_op_threads(intra_op_threads, facts, strategy_name, image_size,
                                 backbone, trains_base))
    tf_strategy = make_strategy(strategy_name, tpu=facts.tpu_address or "local")
    # Before any model exists: layers read the global policy when they are created.
    keras.mixed_precision.set_global_policy(precision)
    replicas = tf_strategy.num_replicas_in_sync
    per_replica = _per_replica_batch(batch_size, batch_size_is, replicas)
    jit, jit_reason = _jit_and_reason(jit_compile, facts, strategy_name)
    on_tpu = strategy_name == "tpu"
    is_chief, worker_index = chief_and_index(read_tf_config())
    return Runtime(
        strategy=tf_strategy,
        strategy_name=strategy_name,
        precision=precision,
        replicas=replicas,
        per_replica_batch=per_replica,
        global_batch=per_replica * replicas,
        jit_compile=jit,
        steps_per_execution=steps_per_execution or (TPU_STEPS_PER_EXECUTION if on_tpu else 1),
        drop_remainder=on_tpu,
        is_chief=is_chief,
        worker_index=worker_index,
        precision_reason=precision_reason,
        jit_reason=jit_reason,
        tpu_address=tpu_master(tf_strategy),
        intra_op_threads=threads,
        threads_reason=threads_reason,
    )


def choose_intra_op_threads(requested: int | str, facts: DeviceFacts, strategy_name: str,
                            image_size: int | None, backbone: Backbone | str | None = None,
                            trains_base: bool = True) -> tuple[int, str]:
    """Intra-op threads to ask TensorFlow for (0: its default, every core), and why.

    ``"auto"`` is 1 on a CPU-only machine for a run that trains a depthwise-separable
    backbone (:data:`CPU_ONE_THREAD_FAMILIES`) on inputs of at most
    :data:`CPU_ONE_THREAD_MAX_SIDE` pixels a side, else 0.

    Example:
        >>> cpu = DeviceFacts()
        >>> choose_intra_op_threads("auto", cpu, "default", 32, "MobileNetV2")[0]
        1
        >>> choose_intra_op_threads("auto", cpu, "default", 224, "MobileNetV2")[0]
        0
        >>> choose_intra_op_threads("auto", cpu, "default", 32, "VGG16")[0]
        0
    """
    if requested != "auto":
        check_int("intra_op_threads", requested, minimum=0, hint=" or 'auto'")
        return int(requested), ("requested explicitly" if requested else "")
    if facts.gpus or facts.tpu or strategy_name in ("tpu", "mirrored") or not trains_base:
        return 0, ""
    family = backbone_family(backbone)
    if family not in CPU_ONE_THREAD_FAMILIES or image_size is None \
            or image_size > CPU_ONE_THREAD_MAX_SIDE:
        return 0, ""
    return 1, (f"{backbone} ({family}) at {image_size}x{image_size} is many small ops, "
               "too little work to split between cores: one intra-op thread trains "
               "faster, the other cores run independent ops and tf.data "
               "(benchmarks/results/cores_threads.json)")


def apply_intra_op_threads(threads: int, reason: str) -> tuple[int, str]:
    """Set TensorFlow's intra-op pool to ``threads`` (0: leave it); what it is, and why.

    TensorFlow fixes its thread pools when it starts (the first op, or a strategy):
    later, in a notebook that already ran TensorFlow, the pool stays as it is and
    the reason says so.
    """
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if threads == 0 or threads == current:
        return current, reason
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        return current, (f"{threads} wanted ({reason}), but TensorFlow had already started "
                         "in this process, so its pool stays at "
                         f"{current or 'every core'}; set it first thing in a new process")
    return threads, f"{threads} ({reason})"


def _per_replica_batch(batch_size: int, batch_size_is: str, replicas: int) -> int:
    if batch_size_is == "per_replica":
        return batch_size
    if batch_size % replicas:
        raise ConfigError(
            f"Global batch_size={batch_size} does not split evenly over {replicas} "
            f"replicas. Use a multiple of {replicas}, e.g. "
            f"{max(1, batch_size // replicas) * replicas}, or batch_size_is='per_replica'."
        )
    return batch_size // replicas


def _jit_and_reason(jit_compile: bool | str, facts: DeviceFacts, strategy_name: str):
    if isinstance(jit_compile, bool):
        return jit_compile, "requested explicitly"
    if strategy_name == "tpu":
        return True, "TPUs always run XLA"
    if facts.gpus:
        return True, "XLA fuses kernels on GPU"
    return False, "on CPU XLA is several times slower than the oneDNN kernels"


def scale_learning_rate(
    lr: float, global_batch: int, base_batch: int = 32, rule: str = "linear"
) -> float:
    """Scale a learning rate tuned at ``base_batch`` to ``global_batch``.

    Rules:

    * ``"linear"``: ``lr * global_batch / base_batch`` (Goyal et al. 2017, for SGD
      with momentum; pair it with warm-up for large batches).
    * ``"sqrt"``: ``lr * sqrt(global_batch / base_batch)`` (gentler; often better
      for Adam-style optimizers).
    * ``"none"``: ``lr`` unchanged.

    Args:
        lr: float. Learning rate that works at ``base_batch``.
        global_batch: int. Batch size summed over all replicas.
        base_batch: int. Batch size ``lr`` was tuned for. Defaults to 32.
        rule: str. ``"linear"``, ``"sqrt"`` or ``"none"``. Defaults to ``"linear"``.

    Returns:
        The scaled learning rate.

    Example:
        >>> scale_learning_rate(1e-3, 128, rule="linear")
        0.004
        >>> scale_learning_rate(1e-3, 128, rule="sqrt")
        0.002
    """
    check_choice("rule", rule, LR_SCALING_RULES)
    if not lr > 0:
        raise ConfigError(f"lr must be > 0; received lr={lr!r}.")
    check_int("global_batch", global_batch)
    check_int("base_batch", base_batch)
    ratio = global_batch / base_batch
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr


def worker_output_dir(output_dir: str | os.PathLike, runtime: Runtime) -> Path:
    """Where this process writes checkpoints and reports.

    Every worker of a multi-worker job must save (saving is a collective), but only
    the chief's files should land in ``output_dir``; the others write to a
    throw-away temporary directory.

    Args:
        output_dir: str or PathLike. The run's output directory.
        runtime: Runtime. From :func:`setup_runtime`.

    Returns:
        ``output_dir`` (created) on the chief, a new temporary directory elsewhere.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> str(worker_output_dir(out, setup_runtime("default", batch_size=8))) == out
        True
    """
    if runtime.is_chief:
        path = Path(output_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"kerastl-worker{runtime.worker_index}-"))


def warn_if_local_data(path: str | os.PathLike, runtime: Runtime) -> bool:
    """Warn when a remote TPU Node would be asked to read a local path.

    A remote TPU Node (``grpc://`` master, the retired Colab TPU setup) reads data
    on its own hosts, so it needs ``gs://`` paths. A TPU VM (today's Colab TPU
    runtime) reads local files fine, so nothing is said there.

    Args:
        path: str or PathLike. A data location the TPU will read.
        runtime: Runtime. From :func:`setup_runtime`.

    Returns:
        True if a warning was issued.

    Example:
        >>> warn_if_local_data("data/train", setup_runtime("default", batch_size=8))
        False
    """
    if not runtime.tpu_address.startswith("grpc://") or str(path).startswith("gs://"):
        return False
    warnings.warn(
        f"The TPU at {runtime.tpu_address} is a remote TPU Node and cannot read the local "
        f"path {str(path)!r}. Copy the data to a gs:// bucket, or use a TPU VM "
        "(tpu='local') which reads local files.",
        UserWarning,
        stacklevel=2,
    )
    return True

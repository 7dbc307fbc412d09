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

import glob
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import tensorflow as tf

from ..config.choices import CPU_ONE_THREAD_MAX_SIDE, JIT_CHOICES, PRECISIONS, STRATEGIES
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError, check_int
from ..models.backbones import get_backbone

BATCH_SIZE_MEANINGS = ("per_replica", "global")
LR_SCALING_RULES = ("linear", "sqrt", "none")

# Tensor Cores (Volta and later) are what make float16 faster than float32;
# on older GPUs mixed_float16 only adds casts.
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)
# CPU flags whose presence makes oneDNN run bfloat16 matmuls/convolutions natively
# (measured here: ~1.45x training speed-up with avx512_bf16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Values of ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) that keep oneDNN
# below its avx512_core_bf16 kernels although the CPU has the flag (oneDNN "CPU
# Dispatcher Control"; AVX512_CORE_BF16, AVX512_CORE_AMX, AVX10_* and ALL keep them).
# TensorFlow looks at the CPU flag only, so under such a cap it still asks oneDNN for
# bfloat16 convolutions, which fail to build ("could not create a primitive descriptor").
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_MIC", "AVX512_MIC_4OPS",
    "AVX512_CORE", "AVX512_CORE_VNNI",
})
# Backbone families (kerastl.models.backbones registry) whose convolutions are mostly
# depthwise-separable (MobileNet's and EfficientNet's inverted-residual blocks). On a
# CPU with avx512_bf16, bfloat16 TRAINS them slower: oneDNN's bfloat16 speed-up is in
# dense convolutions and matmuls, and these networks spend their time in depthwise
# convolutions, BatchNorm, activations and the casts around them. MEASURED
# (benchmarks/results/cores.json, kerastl's training step at 32x32, batch 32, each
# precision in its own process): bfloat16/float32 images/s 0.853 MobileNetV2 a=0.35,
# 0.644 MobileNetV3Small a=0.75, 0.529 EfficientNetB0; but 1.056 ResNet50, 1.569 VGG16.
CPU_FLOAT32_FAMILIES = frozenset({"mobilenet", "mobilenet_v2", "mobilenet_v3", "efficientnet",
                                  "efficientnet_v2"})
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


@dataclass(frozen=True)
class DeviceFacts:
    """Everything auto-selection looks at, so tests can inject any hardware.

    Attributes:
        gpus: tuple of (major, minor). Compute capability of each visible GPU.
        tpu: bool. Whether a TPU is attached (TPU VM or remote TPU Node).
        tpu_address: str or None. ``"local"`` on a TPU VM, ``"grpc://..."`` for a
            remote TPU Node, None without a TPU.
        cpu_flags: frozenset of str. Flags from ``/proc/cpuinfo``.
        n_workers: int. Worker + chief count from ``TF_CONFIG`` (1 without it).
        onednn_max_isa: str. ``ONEDNN_MAX_CPU_ISA`` upper-cased (``""`` when unset).
        onednn_enabled: bool. False when ``TF_ENABLE_ONEDNN_OPTS`` turns oneDNN off.

    Example:
        >>> facts = DeviceFacts(gpus=((8, 0),), tpu=False, tpu_address=None,
        ...                     cpu_flags=frozenset(), n_workers=1)
        >>> choose_precision("auto", facts, "default")
        'mixed_float16'
    """

    gpus: tuple[tuple[int, int], ...] = ()
    tpu: bool = False
    tpu_address: str | None = None
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    n_workers: int = 1
    onednn_max_isa: str = ""
    onednn_enabled: bool = True

    @classmethod
    def detect(cls) -> DeviceFacts:
        """Look at this machine without initialising a TPU system or the TF runtime.

        Only physical devices are listed, so :func:`split_logical_cpus` and
        ``MultiWorkerMirroredStrategy`` can still be set up afterwards.

        Example:
            >>> isinstance(DeviceFacts.detect().n_workers, int)
            True
        """
        tpu_address = _detect_tpu_address()
        return cls(
            gpus=_detect_gpus(),
            tpu=tpu_address is not None,
            tpu_address=tpu_address,
            cpu_flags=_detect_cpu_flags(),
            n_workers=_count_workers(_tf_config()),
            onednn_max_isa=_onednn_max_isa(),
            onednn_enabled=_onednn_enabled(),
        )


def _detect_gpus() -> tuple[tuple[int, int], ...]:
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        # Unknown capability counts as old: float32 is the safe choice.
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return tuple(capabilities)


def _detect_tpu_address() -> str | None:
    # The retired TPU Node setup (Colab before 2024, Cloud TPU Nodes) exposes a
    # gRPC address; a TPU VM has the chips on local PCIe devices.
    if os.environ.get("COLAB_TPU_ADDR"):
        return "grpc://" + os.environ["COLAB_TPU_ADDR"]
    if os.environ.get("TPU_NAME", "").startswith("grpc://"):
        return os.environ["TPU_NAME"]
    if glob.glob("/dev/accel*") or tf.config.list_physical_devices("TPU"):
        return "local"
    return None


def _detect_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no flags means no bfloat16 claim
        pass
    return frozenset()


def _onednn_max_isa() -> str:
    # oneDNN reads ONEDNN_MAX_CPU_ISA first, then the older DNNL_MAX_CPU_ISA.
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return ""


def _onednn_enabled() -> bool:
    # TensorFlow parses this with ReadBoolFromEnvVar: "0"/"false" turn oneDNN off,
    # anything else leaves its default (on for x86 Linux wheels since TF 2.9).
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() not in ("0", "false")


def _tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON: {raw!r}. Set it to e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}.'
        ) from error
    if not isinstance(config, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object; received {raw!r}.")
    return config


def _count_workers(tf_config: dict[str, Any]) -> int:
    cluster = tf_config.get("cluster", {})
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"Unknown {name}={value!r}. Use one of: {', '.join(choices)}.")


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
    _check_choice("strategy", requested, STRATEGIES)
    if requested != "auto":
        return requested
    if facts.tpu:
        return "tpu"
    if facts.n_workers > 1:
        return "multiworker"
    if len(facts.gpus) > 1:
        return "mirrored"
    return "default"


def choose_precision(requested: str, facts: DeviceFacts, strategy_name: str,
                     backbone: str | None = None) -> str:
    """Resolve ``"auto"`` to a Keras dtype policy name; validate anything else.

    Args:
        requested: str. One of ``PRECISIONS``.
        facts: DeviceFacts. The hardware to decide for.
        strategy_name: str. The concrete strategy (TPU rules apply for ``"tpu"``).
        backbone: str, optional. The registry name of the backbone the run trains
            (the policy must be chosen before the model exists). Defaults to None
            (no backbone-specific rule).

    Returns:
        ``"mixed_bfloat16"`` on TPU, ``"mixed_float16"`` when every GPU has compute
        capability >= 7.0, ``"mixed_bfloat16"`` on a CPU-only host with
        ``avx512_bf16``/``amx_bf16`` whose oneDNN is on and not capped below its
        bfloat16 kernels, unless ``backbone`` is of a family in
        :data:`CPU_FLOAT32_FAMILIES`; else ``"float32"``.

    Raises:
        ConfigError: for an unknown value, or ``mixed_float16`` on TPU (TPUs have
            no float16 units).

    Example:
        >>> choose_precision("auto", DeviceFacts(gpus=((6, 1),)), "default")
        'float32'
        >>> bf16 = frozenset({"avx512_bf16"})
        >>> choose_precision("auto", DeviceFacts(cpu_flags=bf16), "default")
        'mixed_bfloat16'
        >>> choose_precision("auto", DeviceFacts(cpu_flags=bf16, onednn_max_isa="AVX2"),
        ...                  "default")
        'float32'
        >>> choose_precision("auto", DeviceFacts(cpu_flags=bf16), "default", "MobileNetV2")
        'float32'
    """
    return _precision_and_reason(requested, facts, strategy_name, backbone)[0]


def _precision_and_reason(requested: str, facts: DeviceFacts, strategy_name: str,
                          backbone: str | None = None):
    _check_choice("precision", requested, PRECISIONS)
    _check_choice("strategy", strategy_name, STRATEGIES[1:])
    on_tpu = strategy_name == "tpu"
    if on_tpu and requested == "mixed_float16":
        raise ConfigError(
            "precision='mixed_float16' is not supported on TPU: TPUs compute in "
            "bfloat16, not float16. Use precision='mixed_bfloat16' (or 'auto')."
        )
    if requested != "auto":
        return requested, "requested explicitly"
    if on_tpu:
        return "mixed_bfloat16", "TPUs compute natively in bfloat16"
    if facts.gpus:
        oldest = min(facts.gpus)
        if oldest >= MIN_FLOAT16_COMPUTE_CAPABILITY:
            return "mixed_float16", "every GPU has Tensor Cores (compute capability >= 7.0)"
        return "float32", (
            f"a GPU has compute capability {oldest[0]}.{oldest[1]} < 7.0 (no Tensor "
            "Cores), where float16 is not faster"
        )
    bf16_flags = ", ".join(sorted(facts.cpu_flags & BF16_CPU_FLAGS))
    if not bf16_flags:
        return "float32", "the CPU has no native bfloat16 (avx512_bf16/amx_bf16)"
    # The flag alone is not enough: TensorFlow reaches the bfloat16 instructions only
    # through oneDNN. Without it Eigen emulates bfloat16 (measured: MobileNetV2 training
    # 2x slower than float32); capped below them, see ONEDNN_ISAS_WITHOUT_BF16.
    if not facts.onednn_enabled:
        return "float32", (
            f"the CPU has {bf16_flags} but TF_ENABLE_ONEDNN_OPTS turns oneDNN off, so "
            "bfloat16 would be emulated"
        )
    if facts.onednn_max_isa in ONEDNN_ISAS_WITHOUT_BF16:
        return "float32", (
            f"the CPU has {bf16_flags} but ONEDNN_MAX_CPU_ISA={facts.onednn_max_isa} keeps "
            "oneDNN below its bfloat16 kernels"
        )
    family = _family(backbone)
    if family in CPU_FLOAT32_FAMILIES:
        return "float32", (
            f"the CPU has {bf16_flags}, but {backbone} is a depthwise-separable network "
            f"({family}), which bfloat16 slows down on CPU (benchmarks/cores.py)"
        )
    return "mixed_bfloat16", f"the CPU has native bfloat16 ({bf16_flags})"


def _family(backbone: str | None) -> str | None:
    if backbone is None:
        return None

    return get_backbone(backbone).family


def make_strategy(
    name: str, *, tpu: str | None = "local", devices: list[str] | None = None
) -> tf.distribute.Strategy:
    """Create the ``tf.distribute.Strategy`` called ``name``.

    Args:
        name: str. ``"default"``, ``"mirrored"``, ``"multiworker"`` or ``"tpu"``.
        tpu: str or None. TPU for ``TPUClusterResolver``: ``"local"`` on a TPU VM
            (Colab TPU runtime), a TPU name or a ``grpc://`` address for a remote
            TPU Node. Defaults to ``"local"``.
        devices: list of str or None. Devices for ``"mirrored"``. Defaults to all
            GPUs, or all logical CPUs (see :func:`split_logical_cpus`) without GPUs.

    Returns:
        The strategy. ``"default"`` is ``tf.distribute.get_strategy()``.

    Raises:
        ConfigError: for an unknown name, ``"multiworker"`` without ``TF_CONFIG``,
            or ``"tpu"`` when no TPU can be reached.

    Example:
        >>> make_strategy("default").num_replicas_in_sync
        1
    """
    _check_choice("strategy", name, STRATEGIES[1:])
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices or _default_mirrored_devices())
    if name == "multiworker":
        return _make_multiworker_strategy()
    return _make_tpu_strategy(tpu)


def _default_mirrored_devices() -> list[str] | None:
    if tf.config.list_logical_devices("GPU"):
        return None  # TensorFlow's own default: every GPU
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _make_multiworker_strategy() -> tf.distribute.Strategy:
    tf_config = _tf_config()
    if not tf_config.get("cluster") or not tf_config.get("task"):
        raise ConfigError(
            f"strategy='multiworker' needs TF_CONFIG with 'cluster' and 'task'; received "
            f"TF_CONFIG={os.environ.get('TF_CONFIG', '')!r}. Set it on every worker, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}, before starting Python.'
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def _make_tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ConfigError(
            f"Could not connect to a TPU with tpu={tpu!r}: {error}. On a Colab/Cloud TPU "
            "VM select a TPU runtime, `pip install tensorflow-tpu` and use tpu='local'; "
            "for a remote TPU Node pass its name or grpc:// address."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def _tpu_master(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return ""
    return resolver.master()


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

        Example:
            >>> print(setup_runtime("default", "float32", batch_size=8).summary())
            Runtime: strategy default, 1 replica, global batch 8, float32, XLA off
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
    backbone: str | None = None,
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
        backbone: str or None. Registry name of the backbone to be built; ``"auto"``
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
    _check_choice("batch_size_is", batch_size_is, BATCH_SIZE_MEANINGS)
    check_int("batch_size", batch_size)
    if steps_per_execution is not None:
        check_int("steps_per_execution", steps_per_execution)
    jit_compile = {"on": True, "off": False}.get(jit_compile, jit_compile)
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ConfigError(f"jit_compile must be True, False or one of {JIT_CHOICES}; received "
                          f"jit_compile={jit_compile!r}.")
    facts = facts if facts is not None else DeviceFacts.detect()
    strategy_name = choose_strategy_name(strategy, facts)
    precision, precision_reason = _precision_and_reason(precision, facts, strategy_name,
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
    is_chief, worker_index = _chief_and_index(_tf_config())
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
        tpu_address=_tpu_master(tf_strategy),
        intra_op_threads=threads,
        threads_reason=threads_reason,
    )


def choose_intra_op_threads(requested: int | str, facts: DeviceFacts, strategy_name: str,
                            image_size: int | None, backbone: str | None = None,
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
    family = _family(backbone)
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


def _chief_and_index(tf_config: dict[str, Any]) -> tuple[bool, int]:
    task = tf_config.get("task", {})
    task_type = task.get("type", "chief" if not tf_config else "worker")
    index = int(task.get("index", 0))
    if task_type == "chief":
        return True, index
    has_chief = bool(tf_config.get("cluster", {}).get("chief"))
    # Without a "chief" entry, TensorFlow treats worker 0 as the chief.
    return task_type == "worker" and index == 0 and not has_chief, index


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
    _check_choice("rule", rule, LR_SCALING_RULES)
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


def split_logical_cpus(n: int) -> list[str]:
    """Split the CPU into ``n`` logical devices so MirroredStrategy can run on a laptop.

    Must be called before TensorFlow initialises its devices (before any tensor,
    model or strategy is created); run it first thing in the script.

    Args:
        n: int. Number of logical CPU devices.

    Returns:
        The logical CPU device names, for ``make_strategy("mirrored", devices=...)``.

    Raises:
        RuntimeError: when TensorFlow has already initialised its devices.

    Example:
        >>> devices = split_logical_cpus(2)  # doctest: +SKIP
        >>> make_strategy("mirrored", devices=devices).num_replicas_in_sync  # doctest: +SKIP
        2
    """
    check_int("n", n)
    cpu = tf.config.list_physical_devices("CPU")[0]
    configs = [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    try:
        tf.config.set_logical_device_configuration(cpu, configs)
    except RuntimeError as error:
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) == n:  # already split this way: calling twice is harmless
            return [device.name for device in existing]
        raise RuntimeError(
            f"split_logical_cpus({n}) was called after TensorFlow initialised its "
            f"devices (it now has {len(existing)} logical CPU(s)). Call it first thing "
            "in the program, before creating any tensor, model or strategy."
        ) from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


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


def loss_scale_optimizer(
    optimizer: keras.optimizers.Optimizer, precision: str
) -> keras.optimizers.Optimizer:
    """Wrap ``optimizer`` in a ``LossScaleOptimizer`` when ``precision`` needs it.

    Only ``mixed_float16`` needs loss scaling: float16 gradients underflow to zero,
    while bfloat16 has float32's exponent range.

    Args:
        optimizer: keras.optimizers.Optimizer. The optimizer to use.
        precision: str. The dtype policy name in effect.

    Returns:
        A ``keras.optimizers.LossScaleOptimizer`` for ``mixed_float16``, else
        ``optimizer`` itself.

    Example:
        >>> opt = loss_scale_optimizer(keras.optimizers.Adam(), "mixed_float16")
        >>> type(opt).__name__
        'LossScaleOptimizer'
    """
    _check_choice("precision", precision, PRECISIONS[1:])
    if precision != "mixed_float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


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

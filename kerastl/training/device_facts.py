"""What this process runs on: GPUs, a TPU, CPU flags, oneDNN, and the cluster (TF_CONFIG)."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError


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
        >>> from kerastl.training.precision import choose_precision
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
        tpu_address = detect_tpu_address()
        return cls(
            gpus=detect_gpus(),
            tpu=tpu_address is not None,
            tpu_address=tpu_address,
            cpu_flags=detect_cpu_flags(),
            n_workers=count_workers(read_tf_config()),
            onednn_max_isa=detect_onednn_max_isa(),
            onednn_enabled=detect_onednn_enabled(),
        )


def detect_gpus() -> tuple[tuple[int, int], ...]:
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        # Unknown capability counts as old: float32 is the safe choice.
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return tuple(capabilities)


def detect_tpu_address() -> str | None:
    # The retired TPU Node setup (Colab before 2024, Cloud TPU Nodes) exposes a
    # gRPC address; a TPU VM has the chips on local PCIe devices.
    if os.environ.get("COLAB_TPU_ADDR"):
        return "grpc://" + os.environ["COLAB_TPU_ADDR"]
    if os.environ.get("TPU_NAME", "").startswith("grpc://"):
        return os.environ["TPU_NAME"]
    if glob.glob("/dev/accel*") or tf.config.list_physical_devices("TPU"):
        return "local"
    return None


def detect_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no flags means no bfloat16 claim
        pass
    return frozenset()


def detect_onednn_max_isa() -> str:
    # oneDNN reads ONEDNN_MAX_CPU_ISA first, then the older DNNL_MAX_CPU_ISA.
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return ""


def detect_onednn_enabled() -> bool:
    # TensorFlow parses this with ReadBoolFromEnvVar: "0"/"false" turn oneDNN off,
    # anything else leaves its default (on for x86 Linux wheels since TF 2.9).
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() not in ("0", "false")


def read_tf_config() -> dict[str, Any]:
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


def count_workers(tf_config: dict[str, Any]) -> int:
    cluster = tf_config.get("cluster", {})
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def chief_and_index(tf_config: dict[str, Any]) -> tuple[bool, int]:
    task = tf_config.get("task", {})
    task_type = task.get("type", "chief" if not tf_config else "worker")
    index = int(task.get("index", 0))
    if task_type == "chief":
        return True, index
    has_chief = bool(tf_config.get("cluster", {}).get("chief"))
    # Without a "chief" entry, TensorFlow treats worker 0 as the chief.
    return task_type == "worker" and index == 0 and not has_chief, index

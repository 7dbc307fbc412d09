"""Distribution strategies: one device, mirrored GPUs or CPUs, several workers, TPUs."""

from __future__ import annotations

import json
import os
import socket

import tensorflow as tf

from ..config.choices import STRATEGIES
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError, check_int
from .device_facts import read_tf_config


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"Unknown {name}={value!r}. Use one of: {', '.join(choices)}.")


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
    check_choice("strategy", name, STRATEGIES[1:])
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
    tf_config = read_tf_config()
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


def tpu_master(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return ""
    return resolver.master()


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


def local_cluster(workers: int) -> list[str]:
    """``TF_CONFIG`` values for ``workers`` processes on this machine, one per worker.

    Start worker ``i`` with ``TF_CONFIG=local_cluster(n)[i]`` (and
    ``--strategy multiworker``) to try a multi-worker run on one machine. The ports
    are ones the OS reported free just now; another process could take one before the
    workers start.

    Example:
        >>> configs = local_cluster(2)
        >>> [json.loads(config)["task"]["index"] for config in configs]
        [0, 1]
        >>> len(json.loads(configs[0])["cluster"]["worker"])
        2
    """
    check_int("workers", workers, minimum=1)
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        addresses = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    return [json.dumps({"cluster": {"worker": addresses},
                        "task": {"type": "worker", "index": index}})
            for index in range(workers)]

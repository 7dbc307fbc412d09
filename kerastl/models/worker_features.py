"""Frozen features under several workers: each extracts its own share, all gather.

Under ``MultiWorkerMirroredStrategy`` the cached-feature path used to run the base
over every image on every worker: W workers did W times the one forward pass the
cache exists to save. Here worker ``w`` of ``W`` extracts rows ``w, w + W, ...``
only, and the rows are gathered, with their row numbers, in blocks of bounded size
into one array in data order on every worker. Every worker then holds the same
features, so the head's epochs and the scikit-learn probe (fitted on each worker
alike) see what one process would.

The workers first agree on the cache: where some already hold the features (a
cache folder kept on one machine), the first of them supplies every row and the
others extract nothing; a worker that skipped the gather the others enter would
leave them waiting.

Left as they were: a TPU host and a single worker with several GPUs (each reads
every image once already), and augmented passes (Keras draws augmentation per
batch from a seed every worker shares: shares would repeat one draw across
workers, so each worker still augments and extracts every image itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from ..core import backend as _backend  # noqa: F401
from ..data.image_data import is_image_data
from .feature_cache import FeatureCache, Features

# Bytes of features gathered per round: the whole array at once would hold it
# several times over on every worker (the share, the padded collective buffer, the
# result and its copy in data order).
GATHER_BYTES_PER_ROUND = 64 * 2**20

Extract = Callable[[Any], Features]


def worker_count(strategy: tf.distribute.Strategy | None) -> int:
    """Workers of a ``MultiWorkerMirroredStrategy`` cluster (chief included); else 1.

    Example:
        >>> worker_count(tf.distribute.get_strategy())
        1
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))


def splits_extraction(strategy: tf.distribute.Strategy | None, data: Any) -> bool:
    """Whether the workers of ``strategy`` each extract only their share of ``data``.

    Example:
        >>> splits_extraction(tf.distribute.get_strategy(), (np.zeros((2, 8, 8)), [0, 1]))
        False
    """
    return worker_count(strategy) > 1 and (is_image_data(data) or _is_array_pair(data))


def cached_on_workers(strategy: tf.distribute.Strategy, cache: FeatureCache, key: str,
                      extract: Extract, data: Any) -> tuple[Features, int]:
    """The features of ``data`` under ``key``, computed by the workers in shares.

    Args:
        strategy: tf.distribute.Strategy. A multi-worker strategy.
        cache: FeatureCache. This worker's cache.
        key: str. The entry's key (the same on every worker).
        extract: callable ``data -> (features, labels)``; it must accept a subset of
            ``data`` (:meth:`kerastl.ImageData.subset`) and keep rows in order.
        data: an ``ImageData`` or an ``(images, labels)`` pair of arrays.

    Returns:
        ``((features, labels), rows extracted by this worker)``.
    """
    holders = _per_replica_sum(strategy, lambda replica: float(cache.contains(key)))
    if holders.all():
        return cache.get_or_compute(key, _never), 0
    if holders.any():  # the first holder supplies every row; nobody runs the base
        supplier, rows = int(np.argmax(holders)), _rows(data)
        empty = (np.arange(0), *_empty_share(extract, data))
        supplied: list = []

        def share(replica: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if replica != supplier:
                return empty
            if not supplied:
                supplied.append((np.arange(rows), *cache.get_or_compute(key, _never)))
            return supplied[0]

        gathered = gather_rows(strategy, share, rows)
        return cache.get_or_compute(key, lambda: gathered), 0
    gathered, here = extract_on_workers(strategy, extract, data)
    return cache.get_or_compute(key, lambda: gathered), here


def extract_on_workers(strategy: tf.distribute.Strategy, extract: Extract,
                       data: Any) -> tuple[Features, int]:
    """``extract(data)``, each worker computing rows ``w, w + W, ...``, gathered.

    The first replica of each worker carries its worker's share; any other local
    replica (a worker's second GPU) sends none.

    Returns:
        ``((features, labels) of every row in data order, rows extracted here)``.
    """
    workers, rows = worker_count(strategy), _rows(data)
    per_worker = max(1, strategy.num_replicas_in_sync // workers)
    shares: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def share(replica: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if replica not in shares:
            mine = (np.arange(replica // per_worker, rows, workers)
                    if replica % per_worker == 0 else np.arange(0))
            shares[replica] = (mine, *(extract(_subset(data, mine)) if len(mine)
                                       else _empty_share(extract, data)))
        return shares[replica]

    gathered = gather_rows(strategy, share, rows)
    return gathered, sum(len(rows_of[0]) for rows_of in shares.values())


def gather_rows(strategy: tf.distribute.Strategy,
                share: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
                rows: int) -> Features:
    """Every replica's ``(row numbers, features, labels)`` into one array in row order.

    Gathered in rounds of at most ``GATHER_BYTES_PER_ROUND`` a replica, each row put
    where its number says (a collective need not concatenate in replica order).

    Raises:
        RuntimeError: the shares do not cover every row exactly once.
    """
    sizes = _per_replica_sum(strategy, lambda replica: float(len(share(replica)[0])))
    template = share(_first_local_replica(strategy))
    row_bytes = max(1, int(template[1][:1].nbytes) or template[1].itemsize)
    block = max(1, GATHER_BYTES_PER_ROUND // row_bytes)
    features = np.empty((rows, *template[1].shape[1:]), template[1].dtype)
    labels = np.empty((rows, *template[2].shape[1:]), template[2].dtype)
    filled = np.zeros(rows, np.int64)
    for start in range(0, int(sizes.max()), block):
        parts = [_gathered(strategy, lambda replica, p=p, first=start:
                           share(replica)[p][first:first + block]) for p in range(3)]
        index = parts[0].astype(np.int64)
        features[index], labels[index] = parts[1], parts[2]
        np.add.at(filled, index, 1)
    if rows and not (filled == 1).all():
        raise RuntimeError(f"The workers' feature shares cover {int((filled > 0).sum())} of "
                           f"{rows} rows ({int((filled > 1).sum())} twice); expected each once.")
    return features, labels


def _gathered(strategy: tf.distribute.Strategy, local: Callable[[int], np.ndarray]) -> np.ndarray:
    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(local(context.replica_id_in_sync_group)))
    return strategy.gather(values, axis=0).numpy()


def _per_replica_sum(strategy: tf.distribute.Strategy,
                     value: Callable[[int], float]) -> np.ndarray:
    """``value(r)`` of every replica ``r``, known to all (one-hot vectors summed)."""
    replicas = strategy.num_replicas_in_sync

    def one_hot(context: tf.distribute.ValueContext) -> tf.Tensor:
        replica = context.replica_id_in_sync_group
        return tf.constant(np.eye(replicas)[replica] * value(replica))

    summed = strategy.reduce(tf.distribute.ReduceOp.SUM,
                             strategy.experimental_distribute_values_from_function(one_hot),
                             axis=None)
    return np.asarray(summed)


def _first_local_replica(strategy: tf.distribute.Strategy) -> int:
    local: list[int] = []
    strategy.experimental_distribute_values_from_function(
        lambda context: local.append(context.replica_id_in_sync_group) or tf.constant(0))
    return min(local)


def _never() -> Features:
    raise RuntimeError("The feature cache lost an entry it had just reported holding.")


def _rows(data: Any) -> int:
    return len(data.labels) if is_image_data(data) else len(data[1])


def _subset(data: Any, rows: np.ndarray) -> Any:
    if is_image_data(data):
        return data.subset(rows)
    images, labels = data
    return np.asarray(images)[rows], np.asarray(labels)[rows]


def _empty_share(extract: Extract, data: Any) -> Features:
    """Zero rows of the right shapes and types (the base runs on one image)."""
    features, labels = extract(_subset(data, np.arange(1)))
    return features[:0], labels[:0]


def _is_array_pair(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 2
            and all(isinstance(part, np.ndarray) for part in data))

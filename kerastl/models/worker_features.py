"""Frozen features under several workers: each extracts its own share, all gather.

Under ``MultiWorkerMirroredStrategy`` the cached-feature path used to run the base
over every training image on every worker: N workers did N times the one forward
pass the cache exists to save. Here replica ``r`` of ``R`` (a worker computes the
rows of the replicas it holds) extracts rows ``r, r + R, r + 2R, ...`` only, and
``strategy.gather`` hands every worker the whole array back in data order. Every
worker then holds the same features, so the head's epochs and the scikit-learn
probe (fitted where the features are, on each worker alike) see exactly what one
process would.

A TPU host, or one worker with several GPUs, reads every image once already: only
``MultiWorkerMirroredStrategy`` with more than one worker is split here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from ..core import backend as _backend  # noqa: F401
from ..data.image_data import is_image_data
from .feature_cache import FeatureCache, Features


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
    """Whether the workers of ``strategy`` each extract only their share of ``data``."""
    return worker_count(strategy) > 1 and (is_image_data(data) or _is_array_pair(data))


def all_have(strategy: tf.distribute.Strategy, cache: FeatureCache, key: str) -> bool:
    """Whether every worker's cache holds ``key`` (each worker has its own disk).

    The workers must agree: one that found the features while another extracts its
    share would leave the other waiting for a gather that never comes.
    """
    missing = 0.0 if cache.contains(key) else 1.0
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(missing))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)) == 0.0


def extract_on_workers(
    strategy: tf.distribute.Strategy,
    extract: Any,
    data: Any,
) -> Features:
    """``extract(data)`` computed by the replicas of ``strategy`` in shares, gathered.

    Args:
        strategy: tf.distribute.Strategy. A multi-worker strategy.
        extract: callable ``data -> (features, labels)`` (e.g.
            :func:`kerastl.models.features.run_extractor` with its arguments bound);
            it must accept a subset of ``data`` and keep rows in order.
        data: an ``ImageData`` or an ``(images, labels)`` pair of arrays.

    Returns:
        ``(features, labels)`` of every row of ``data``, in data order, on every worker.
    """
    replicas = strategy.num_replicas_in_sync
    rows = len(data.labels) if is_image_data(data) else len(data[1])
    shares: dict[int, Features] = {}

    def share(replica: int) -> Features:
        if replica not in shares:
            mine = np.arange(replica, rows, replicas)
            shares[replica] = (extract(_subset(data, mine)) if len(mine)
                               else _empty_share(extract, data))
        return shares[replica]

    gathered = [
        strategy.gather(strategy.experimental_distribute_values_from_function(
            lambda context, part=part: tf.constant(share(context.replica_id_in_sync_group)[part])),
            axis=0).numpy()
        for part in (0, 1)
    ]
    # Replica order holds rows 0, R, 2R, ... then 1, R+1, ...: put them back in data order.
    order = np.concatenate([np.arange(r, rows, replicas) for r in range(replicas)])
    restored = [np.empty_like(array) for array in gathered]
    for array, out in zip(gathered, restored, strict=True):
        out[order] = array
    return restored[0], restored[1]


def _subset(data: Any, rows: np.ndarray) -> Any:
    if is_image_data(data):
        return data.subset(rows)
    images, labels = data
    return np.asarray(images)[rows], np.asarray(labels)[rows]


def _empty_share(extract: Any, data: Any) -> Features:
    """Zero rows of the right shapes, for a replica past the last row (N < R)."""
    features, labels = extract(_subset(data, np.arange(1)))
    return features[:0], labels[:0]


def _is_array_pair(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 2
            and all(isinstance(part, np.ndarray) for part in data))


"""The feature cache: base features named by everything they depend on, kept safely.

* :func:`cache_key` names features by the backbone, its weight values and weightless
  settings, the preprocessing, the versions and decoder, the data and augmentation,
  so a stale entry can never be read.
* :class:`FeatureCache` keeps entries in memory within a budget and memory-maps
  larger ones from ``.npy`` files written atomically (:mod:`kerastl.core.files`).

Example:
    >>> import numpy as np
    >>> cache = FeatureCache()
    >>> _ = cache.get_or_compute("k", lambda: (np.zeros((2, 3)), np.zeros(2)))
    >>> cache.misses
    1
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import tensorflow as tf

from ..core import backend as _backend  # noqa: F401
from ..core import version
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_write
from ..data import image_data as data_module
from ..data.image_data import is_image_data
from .freezing import BACKBONE_LAYER, DEPTHS_LAYER, PREPROCESS_LAYER, find_backbone

Features = tuple[np.ndarray, np.ndarray]


def cache_key(
    model: keras.Model,
    data_fingerprint: str,
    image_size: int,
    augment_pass: int | None = None,
    *,
    augment: Any = None,
    model_digest: str | None = None,
) -> str:
    """Name cached features by everything they depend on.

    A SHA-256 over the backbone name, the base's weight values (so other weights
    never reuse features), its weightless settings (each layer's config), the
    kerastl, Keras and TensorFlow versions, the image decoder
    (:data:`kerastl.data.image_data.DECODE_METHOD`), the base's input and output shapes and
    compute dtype, the preprocessing layer's config, the data fingerprint, the image
    size, and the augmentation (its config and pass number).

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        data_fingerprint: str. E.g. ``ImageData.fingerprint()``.
        image_size: int. Input side the images are decoded at.
        augment_pass: int, optional. Which augmented pass; None without augmentation.
        augment: optional. The augmentation; its Keras config (or repr) is hashed.
        model_digest: str, optional. :func:`base_digest` of ``model``, when the
            caller names several entries of one model (it hashes every weight).

    Returns:
        ``"<backbone>-<image size>-<sha256 hex>"``, safe as a file name.

    Example:
        >>> import kerastl
        >>> from kerastl.models.feature_cache import cache_key
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> cache_key(model, "data-v1", 32).startswith("vgg16-32-")
        True
    """
    _, entry = find_backbone(model)
    parts = [
        model_digest or base_digest(model),
        data_module.DECODE_METHOD,
        str(data_fingerprint),
        int(image_size),
        augment_pass,
        _augment_description(augment),
        _features_description(model),
    ]
    return f"{entry.name.lower()}-{int(image_size)}-{_sha256_of(parts)}"


def _features_description(model: keras.Model) -> list | None:
    """What a multi-depth probe pools besides the base (None for any other model)."""
    names = {layer.name for layer in model.layers}
    if DEPTHS_LAYER not in names:
        return None
    return [(layer.name, json.dumps(layer.get_config(), sort_keys=True, default=repr))
            for layer in model.layers if layer.name not in (BACKBONE_LAYER, PREPROCESS_LAYER)
            and not layer.weights]


def base_digest(model: keras.Model) -> str:
    """SHA-256 of what a model's features depend on besides the data.

    The backbone name, the base's weight values, its weightless settings (each
    layer's config), the kerastl, Keras and TensorFlow versions, the base's input
    and output shapes and compute dtype, and the preprocessing layer's config.

    Example:
        >>> import kerastl
        >>> from kerastl.models.feature_cache import base_digest
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> len(base_digest(model))
        64
    """
    base, entry = find_backbone(model)
    parts = [
        entry.name,
        _weights_digest(base),
        _architecture_digest(base),
        _versions(),
        tuple(base.input_shape),
        tuple(base.output_shape),
        base.compute_dtype,
        json.dumps(model.get_layer(PREPROCESS_LAYER).get_config(), sort_keys=True),
    ]
    return _sha256_of(parts)


def _sha256_of(parts: list[Any]) -> str:
    """SHA-256 hex of each part's ``repr``, NUL-separated."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _weights_digest(base: keras.Model) -> str:
    digest = hashlib.sha256()
    for variable in base.weights:  # BatchNorm moving statistics included
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def _architecture_digest(base: keras.Model) -> str:
    """What the base computes besides its weights: every operation's class and config.

    Weightless settings change features without changing any weight
    (``include_preprocessing`` adds a Rescaling layer; activations, padding...).
    Names are left out: Keras numbers unnamed layers per process (``re_lu_24``).
    """
    digest = hashlib.sha256()
    for operation in base.operations:
        try:
            config = dict(operation.get_config())
        except NotImplementedError:  # an op without a config: its class says what it does
            config = {}
        config.pop("name", None)
        config.pop("trainable", None)  # the extractor runs the base in inference mode
        digest.update(type(operation).__name__.encode())
        digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def _versions() -> tuple[str, str, str]:
    """kerastl, Keras and TensorFlow versions: kernels and layers change between them."""
    return version.__version__, keras.__version__, tf.__version__


def _augment_description(augment: Any) -> str | None:
    if augment is None:
        return None
    if hasattr(augment, "get_config"):
        return json.dumps(keras.saving.serialize_keras_object(augment), sort_keys=True,
                          default=repr)
    return repr(augment)


def data_fingerprint(data: Any, content: bool = False) -> str:
    """A stable identity of the data, for :func:`cache_key`.

    Args:
        data: an ``ImageData`` (its own ``fingerprint()``), an image array or an
            ``(images, labels)`` tuple (hashed).
        content: bool. Identify files by their bytes too, not only path, size and
            time: needed when the cache outlives the process (on disk). Defaults to
            False.

    Returns:
        A hex string.

    Raises:
        DataError: ``data`` is a ``tf.data.Dataset``, which cannot be fingerprinted
            without reading it.

    Example:
        >>> import numpy as np
        >>> from kerastl.models.feature_cache import data_fingerprint
        >>> data_fingerprint(np.zeros((2, 4, 4, 3))) == data_fingerprint(np.ones((2, 4, 4, 3)))
        False
    """
    if is_image_data(data):
        return str(data.fingerprint(content=True) if content else data.fingerprint())
    if isinstance(data, tf.data.Dataset):
        raise DataError(
            "The feature cache cannot fingerprint a tf.data.Dataset without reading it; "
            "received a tf.data.Dataset. Pass a kerastl ImageData or (images, labels) "
            "arrays, or train without the feature cache."
        )
    arrays = data if isinstance(data, tuple) else (data,)
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- cache
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FeatureCache:
    """Features by key: in memory within a budget, memory-mapped ``.npy`` beyond it.

    Entries that fit ``memory_budget_bytes`` stay in memory (and are also written to
    ``directory`` when one is given, so a later run reuses them). Larger ones are
    written to ``directory/<key>.npy`` (labels to ``<key>.labels.npy``), or to a
    temporary directory removed with the cache, and returned memory-mapped. Files
    are written to a temporary name and renamed, so a crash never leaves a partial
    entry under a real name; an unreadable file is recomputed with a warning.

    Args:
        directory: str or path, optional. Where features persist between runs.
        memory_budget_bytes: int. Bytes of features kept in memory. Defaults to 2 GiB.

    Attributes:
        hits: int. Lookups answered from memory or disk.
        misses: int. Lookups that computed features.

    Example:
        >>> import numpy as np
        >>> from kerastl.models.feature_cache import FeatureCache
        >>> cache = FeatureCache()
        >>> _ = cache.get_or_compute("k", lambda: (np.zeros((2, 3)), np.zeros(2)))
        >>> _ = cache.get_or_compute("k", lambda: (np.zeros((2, 3)), np.zeros(2)))
        >>> cache.hits, cache.misses
        (1, 1)
    """

    def __init__(self, directory: str | os.PathLike | None = None,
                 memory_budget_bytes: int = 2 << 30) -> None:
        if not isinstance(memory_budget_bytes, int) or memory_budget_bytes < 0:
            raise ConfigError(
                "memory_budget_bytes must be a non-negative int; received "
                f"memory_budget_bytes={memory_budget_bytes!r}."
            )
        self.directory = Path(directory) if directory is not None else None
        self.memory_budget_bytes = memory_budget_bytes
        self.hits = 0
        self.misses = 0
        self.recomputed_corrupt = 0
        self._memory: dict[str, Features] = {}
        self._mapped: dict[str, int] = {}  # key -> bytes served memory-mapped
        self._scratch: Path | None = None

    @property
    def memory_bytes(self) -> int:
        """Bytes of features and labels held in memory."""
        return sum(_nbytes(entry) for entry in self._memory.values())

    def contains(self, key: str) -> bool:
        """Whether :meth:`get_or_compute` would find ``key`` without computing it
        (a readable entry on disk is loaded or mapped now, as that would)."""
        _check_key(key)
        if key in self._memory:
            return True
        stored = self._read(key)
        if stored is not None:
            self._keep(key, stored)
        return stored is not None

    def get_or_compute(self, key: str, compute: Callable[[], Features]) -> Features:
        """Return the features stored under ``key``, computing them on a miss.

        Args:
            key: str. From :func:`cache_key` (letters, digits, ``_.-``).
            compute: callable returning ``(features, labels)`` arrays.

        Returns:
            ``(features, labels)``: in-memory arrays, or read-only memory maps when
            they exceed the memory budget.
        """
        _check_key(key)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        stored = self._read(key)
        if stored is not None:
            self.hits += 1
            return self._keep(key, stored)
        self.misses += 1
        features, labels = _checked(compute(), key)
        fits = self.memory_bytes + _nbytes((features, labels)) <= self.memory_budget_bytes
        if fits and self.directory is None:
            self._memory[key] = (features, labels)
            return features, labels
        self._write(key, features, labels)
        return self._keep(key, self._read(key))

    def explain(self) -> str:
        """One line for the run log: hits and misses, where features live, sizes.

        Example:
            >>> from kerastl.models.feature_cache import FeatureCache
            >>> FeatureCache().explain()
            'feature cache: 0 hits, 0 misses; memory: 0 entries, 0 B of 2.0 GiB budget'
        """
        parts = [
            f"feature cache: {self.hits} hits, {self.misses} misses",
            f"memory: {len(self._memory)} entries, {_size(self.memory_bytes)} of "
            f"{_size(self.memory_budget_bytes)} budget",
        ]
        if self._mapped:
            where = self.directory or self._scratch
            parts.append(f"memory-mapped: {len(self._mapped)} entries, "
                         f"{_size(sum(self._mapped.values()))} in {where}")
        elif self.directory is not None:
            parts.append(f"persisted in {self.directory}")
        if self.recomputed_corrupt:
            parts.append(f"{self.recomputed_corrupt} unreadable files recomputed")
        return "; ".join(parts)

    def _keep(self, key: str, stored: Features) -> Features:
        """Hold a disk entry in memory if it fits the budget, else serve it mapped."""
        if self.memory_bytes + _nbytes(stored) <= self.memory_budget_bytes:
            self._memory[key] = tuple(np.array(a) for a in stored)
            return self._memory[key]
        self._mapped[key] = _nbytes(stored)
        return stored

    def _paths(self, key: str, directory: Path) -> tuple[Path, Path]:
        return directory / f"{key}.npy", directory / f"{key}.labels.npy"

    def _read(self, key: str) -> Features | None:
        directory = self.directory or self._scratch
        if directory is None:
            return None
        features_path, labels_path = self._paths(key, directory)
        if not features_path.exists():
            return None
        try:
            features = np.load(features_path, mmap_mode="r", allow_pickle=False)
            labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
            if len(features) != len(labels):
                raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        except (OSError, ValueError, EOFError) as error:
            warnings.warn(
                f"Feature cache file {features_path} is unreadable ({error}); recomputing "
                "the features and overwriting it.",
                stacklevel=3,
            )
            self.recomputed_corrupt += 1
            return None
        return features, labels

    def _write(self, key: str, features: np.ndarray, labels: np.ndarray) -> None:
        directory = self.directory or self._scratch_directory()
        directory.mkdir(parents=True, exist_ok=True)
        features_path, labels_path = self._paths(key, directory)
        # Labels first: the features file is what marks an entry as present.
        _atomic_save(labels_path, labels)
        _atomic_save(features_path, features)

    def _scratch_directory(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="kerastl-features-"))
            # Removed with the cache; Linux keeps already-mapped files readable.
            weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)
        return self._scratch


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ConfigError(
            f"Cache keys are file names of letters, digits and '_.-'; received {key!r}."
        )


def _checked(result: Any, key: str) -> Features:
    try:
        features, labels = result
    except (TypeError, ValueError) as error:
        raise DataError(
            f"The compute function for cache key {key!r} must return (features, labels); "
            f"received {type(result).__name__}."
        ) from error
    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels):
        raise DataError(
            f"Cache key {key!r}: {len(features)} feature rows but {len(labels)} labels."
        )
    return features, labels


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, np.asarray(array), allow_pickle=False))


def _nbytes(entry: Features) -> int:
    return sum(int(np.asarray(a).nbytes) for a in entry)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover

"""Frozen features: compute the base once, cache it, train the head on the cache.

When the base of a kerastl model is frozen and no augmentation runs before it, every
epoch pushes the same images through the same function. Computing the base output
once and training only the head on it gives the same model for a fraction of the
cost (the Keras transfer-learning guide's "feature extraction" recipe, made safe):

* :func:`feature_extractor` and :func:`head_model` split a kerastl model into two
  models that share the original layer objects, so training the head model trains
  the head of the saved end-to-end model.
* :func:`cache_key` names features by everything they depend on (backbone, base
  weight values, input shape, preprocessing, data, augmentation pass), so a stale
  cache can never be read.
* :class:`FeatureCache` keeps features in memory within a budget and memory-maps
  larger ones from ``.npy`` files written atomically.
* :func:`cached_feature_datasets` gives a trainer what it needs: a reproducibly
  shuffled training dataset per epoch and a validation dataset, both of features.
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
from typing import Any, NamedTuple

import keras  # noqa: E402
import numpy as np
import tensorflow as tf

from . import _backend  # noqa: F401
from .errors import ConfigError, DataError
from .freezing import (
    BACKBONE_LAYER,
    PREPROCESS_LAYER,
    base_called_in_inference,
    base_nodes,
    find_backbone,
)

POOLINGS = (None, "avg", "max")
# --feature-cache: "auto" trains frozen phases on cached base features when that
# trains the same model (see cache_applies); "off" always runs the images.
FEATURE_CACHE_MODES = ("auto", "off")

Features = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------- models
def feature_extractor(model: keras.Model, *, pooling: str | None = None) -> keras.Model:
    """Raw pixels → the model's preprocessing → its base, in inference mode.

    The extractor calls the very ``preprocess`` and ``backbone`` layer objects of
    ``model``, so it always computes the features the full model's head sees.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        pooling: str, optional. ``"avg"`` or ``"max"`` pools the base output to one
            vector per image; ``None`` keeps the feature map. Defaults to None.

    Returns:
        A functional model named ``<model name>_features``.

    Example:
        >>> import kerastl
        >>> from kerastl.features import feature_extractor
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> feature_extractor(model, pooling="avg").output.shape
        (None, 512)
    """
    _check_pooling(pooling)
    base, _ = find_backbone(model)
    images = keras.Input(shape=model.input_shape[1:], name="image")
    x = model.get_layer(PREPROCESS_LAYER)(images)
    # Inference mode whatever the model's bn_policy: cached features must not
    # depend on BatchNorm batch statistics or on dropout inside the base.
    x = base(x, training=False)
    if pooling is not None:
        pool = {"avg": keras.layers.GlobalAveragePooling2D,
                "max": keras.layers.GlobalMaxPooling2D}[pooling]
        x = pool(name=f"features_{pooling}")(x)
    return keras.Model(images, x, name=f"{model.name}_features")


def head_model(model: keras.Model) -> keras.Model:
    """Base output → the model's head layers → predictions, sharing the layers.

    The head model reuses the layer instances of ``model`` (not copies), so fitting
    it on cached features updates the weights of the end-to-end model.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.

    Returns:
        A functional model whose input has the base's output shape.

    Example:
        >>> import kerastl
        >>> from kerastl.features import head_model
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> head = head_model(model)
        >>> head.input_shape, head.layers[-1] is model.get_layer("predictions")
        ((None, 1, 1, 512), True)
    """
    find_backbone(model)
    nodes = base_nodes(model)
    if len(nodes) != 1:
        raise ConfigError(
            f"Model {model.name!r} calls its '{BACKBONE_LAYER}' layer {len(nodes)} times; "
            "head_model needs a model built by kerastl.build_model, which calls it once."
        )
    # Keras clones the graph from an intermediate tensor onwards with a new Input
    # and the same layer objects.
    return keras.Model(nodes[0].output_tensors[0], model.outputs, name=f"{model.name}_head")


# ------------------------------------------------------------------------ extraction
def extract_features(
    model_or_backbone: keras.Model | str,
    data: Any,
    *,
    image_size: int | None = None,
    batch_size: int = 64,
    labels: np.ndarray | None = None,
    pooling: str | None = None,
    weights: str | os.PathLike | None = "imagenet",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Compute base features (float32) and their labels in one pass over ``data``.

    Args:
        model_or_backbone: a kerastl model, or a backbone name (a model is then built
            with ``weights`` at ``image_size``).
        data: an ``ImageData``, a batched ``tf.data.Dataset`` of ``(images, labels)``
            or of images, a NumPy array of raw images in ``[0, 255]``, or an
            ``(images, labels)`` tuple of arrays.
        image_size: int, optional. Input side. Defaults to the model's input side,
            or to the backbone's default size when a name is given.
        batch_size: int. Images per forward pass. Defaults to 64.
        labels: array, optional. Labels of ``data`` when it is an image array.
        pooling: str, optional. ``"avg"``, ``"max"`` or ``None`` (feature maps).
        weights: ``"imagenet"``, ``None`` or a path; only used with a backbone name.
            Defaults to ``"imagenet"``.

    Returns:
        ``(features, labels)``; ``labels`` is None when ``data`` has none.

    Example:
        >>> import numpy as np
        >>> from kerastl.features import extract_features
        >>> features, _ = extract_features("VGG16", np.zeros((3, 32, 32, 3)),
        ...                                image_size=32, weights=None, pooling="avg")
        >>> features.shape, features.dtype
        ((3, 512), dtype('float32'))
    """
    if isinstance(model_or_backbone, str):
        from .model import build_model  # model.py imports nothing from here

        model = build_model(model_or_backbone, 2, input_shape=image_size, weights=weights,
                            head="avg", dense_units=())
    else:
        model = model_or_backbone
    _check_image_size(model, image_size)
    return run_extractor(feature_extractor(model, pooling=pooling), data,
                         batch_size=batch_size, labels=labels)


def run_extractor(
    extractor: keras.Model,
    data: Any,
    *,
    batch_size: int = 64,
    labels: np.ndarray | None = None,
    augment: Any = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run a feature extractor (or any image model) over ``data`` in inference mode.

    One pass yields features and labels together, so they stay aligned and the
    images are decoded once (``Model.predict`` would drop the labels).

    Args:
        extractor: keras.Model. E.g. from :func:`feature_extractor`, or reloaded.
        data: as in :func:`extract_features`. Images of another size are resized.
        batch_size: int. Defaults to 64.
        labels: array, optional. Labels when ``data`` is an image array.
        augment: callable, optional. Augmentation applied before the extractor (an
            ``ImageData`` applies it itself).

    Returns:
        ``(features float32, labels or None)``.

    Example:
        >>> import numpy as np, kerastl
        >>> from kerastl.features import feature_extractor, run_extractor
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> run_extractor(feature_extractor(model), np.zeros((2, 32, 32, 3)))[0].shape
        (2, 1, 1, 512)
    """
    size = tuple(extractor.input_shape[1:3])
    batches = image_batches(data, image_size=size[0], batch_size=batch_size, labels=labels,
                            augment=augment)
    features, label_batches = [], []
    for element in batches:
        images, batch_labels = element if isinstance(element, tuple) else (element, None)
        # predict_on_batch reuses the model's compiled predict function across calls.
        batch_features = extractor.predict_on_batch(_fit_images(images, size))
        features.append(np.asarray(batch_features, dtype=np.float32))
        if batch_labels is not None:
            label_batches.append(np.asarray(batch_labels))
    if not features:
        raise DataError(f"No images to extract features from; received {_describe(data)}.")
    return np.concatenate(features), (np.concatenate(label_batches) if label_batches else None)


def image_batches(
    data: Any,
    *,
    image_size: int,
    batch_size: int,
    labels: np.ndarray | None = None,
    augment: Any = None,
) -> tf.data.Dataset:
    """Batched ``(images, labels)`` (or images) in a fixed order from any accepted data.

    Args:
        data: an ``ImageData`` (anything with ``batches`` and ``fingerprint``), a
            batched ``tf.data.Dataset``, an image array or an ``(images, labels)``
            tuple of arrays.
        image_size: int. Passed to ``ImageData.batches``.
        batch_size: int. Batch size for ``ImageData`` and arrays.
        labels: array, optional. Labels of an image array.
        augment: callable, optional. Applied to each batch with ``training=True``.

    Returns:
        A ``tf.data.Dataset``.

    Example:
        >>> import numpy as np
        >>> from kerastl.features import image_batches
        >>> ds = image_batches(np.zeros((5, 8, 8, 3)), image_size=8, batch_size=2)
        >>> [int(b.shape[0]) for b in ds]
        [2, 2, 1]
    """
    if _is_image_data(data):
        return data.batches(image_size, batch_size, shuffle_seed=None, augment=augment)
    if isinstance(data, tuple) and len(data) == 2 and labels is None:
        data, labels = data
    if isinstance(data, tf.data.Dataset):
        dataset = data
    else:
        dataset = _array_dataset(data, labels).batch(batch_size)
    if augment is not None:
        dataset = dataset.map(_augmenter(augment, labelled=isinstance(dataset.element_spec,
                                                                      tuple)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _augmenter(augment: Any, *, labelled: bool) -> Callable:
    if labelled:
        return lambda images, labels: (augment(images, training=True), labels)
    return lambda images: augment(images, training=True)


def _array_dataset(images: Any, labels: np.ndarray | None) -> tf.data.Dataset:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"Images must be an array of shape (n, height, width, 3) with raw pixels in "
            f"[0, 255]; received shape {images.shape}. Add a channel axis to grayscale "
            "images with images[..., None]."
        )
    if labels is None:
        return tf.data.Dataset.from_tensor_slices(images)
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise DataError(
            f"Got {len(images)} images but {len(labels)} labels; pass one label per image."
        )
    return tf.data.Dataset.from_tensor_slices((images, labels))


def _fit_images(images, size: tuple[int, int]):
    """Float32 RGB images of the extractor's input size."""
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    if tuple(images.shape[1:3]) != size:
        images = tf.image.resize(images, size)
    return images


def _is_image_data(data: Any) -> bool:
    return hasattr(data, "batches") and hasattr(data, "fingerprint")


def _describe(data: Any) -> str:
    shape = getattr(data, "shape", None)
    return f"{type(data).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def _check_pooling(pooling: str | None) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}; received pooling={pooling!r}.")


def _check_image_size(model: keras.Model, image_size: int | None) -> None:
    side = model.input_shape[1]
    if image_size is not None and int(image_size) != side:
        raise ConfigError(
            f"Model {model.name!r} takes {side}x{side} images; received image_size="
            f"{image_size}. Build the model with input_shape={image_size} or pass "
            f"image_size={side}."
        )


# ----------------------------------------------------------------------------- keys
def cache_key(
    model: keras.Model,
    data_fingerprint: str,
    image_size: int,
    augment_pass: int | None = None,
    *,
    augment: Any = None,
) -> str:
    """Name cached features by everything they depend on.

    A SHA-256 over the backbone name, the base's weight values (so other weights
    never reuse features), its weightless settings (each layer's config), the
    kerastl, Keras and TensorFlow versions, the image decoder
    (:data:`kerastl.data.DECODE_METHOD`), the base's input and output shapes and
    compute dtype, the preprocessing layer's config, the data fingerprint, the image
    size, and the augmentation (its config and pass number).

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        data_fingerprint: str. E.g. ``ImageData.fingerprint()``.
        image_size: int. Input side the images are decoded at.
        augment_pass: int, optional. Which augmented pass; None without augmentation.
        augment: optional. The augmentation; its Keras config (or repr) is hashed.

    Returns:
        ``"<backbone>-<image size>-<sha256 hex>"``, safe as a file name.

    Example:
        >>> import kerastl
        >>> from kerastl.features import cache_key
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> cache_key(model, "data-v1", 32).startswith("vgg16-32-")
        True
    """
    from . import data as data_module

    base, entry = find_backbone(model)
    parts = [
        entry.name,
        _weights_digest(base),
        _architecture_digest(base),
        _versions(),
        data_module.DECODE_METHOD,
        tuple(base.input_shape),
        tuple(base.output_shape),
        base.compute_dtype,
        json.dumps(model.get_layer(PREPROCESS_LAYER).get_config(), sort_keys=True),
        str(data_fingerprint),
        int(image_size),
        augment_pass,
        _augment_description(augment),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return f"{entry.name.lower()}-{int(image_size)}-{digest.hexdigest()}"


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
    import kerastl

    return kerastl.__version__, keras.__version__, tf.__version__


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
        >>> from kerastl.features import data_fingerprint
        >>> data_fingerprint(np.zeros((2, 4, 4, 3))) == data_fingerprint(np.ones((2, 4, 4, 3)))
        False
    """
    if _is_image_data(data):
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
        >>> from kerastl.features import FeatureCache
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

    def get_or_compute(self, key: str, compute: Callable[[], Features]) -> Features:
        """Return the features stored under ``key``, computing them on a miss.

        Args:
            key: str. From :func:`cache_key` (letters, digits, ``_.-``).
            compute: callable returning ``(features, labels)`` arrays.

        Returns:
            ``(features, labels)``: in-memory arrays, or read-only memory maps when
            they exceed the memory budget.
        """
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(
                f"Cache keys are file names of letters, digits and '_.-'; received {key!r}."
            )
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
            >>> from kerastl.features import FeatureCache
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
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, np.asarray(array), allow_pickle=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _nbytes(entry: Features) -> int:
    return sum(int(np.asarray(a).nbytes) for a in entry)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ------------------------------------------------------------------------- training
def cache_applies(model: keras.Model, augment: Any = None, *,
                  augment_passes: int = 0) -> tuple[bool, str]:
    """Whether training the head on cached features trains the same model.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        augment: optional. Augmentation applied to images before the model.
        augment_passes: int. Augmented passes the cache would hold. Defaults to 0.

    Returns:
        ``(True, why)`` or ``(False, reason)``, for the run log.

    Example:
        >>> import kerastl
        >>> from kerastl.features import cache_applies
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> cache_applies(model, None)
        (True, 'base frozen and no augmentation before it')
    """
    base, _ = find_backbone(model)
    if base.trainable_weights:
        return False, (f"base has trainable layers ({len(base.trainable_weights)} trainable "
                       "weights), so its features change every step")
    before = [layer.name for layer in model.layers[: model.layers.index(base)]
              if not isinstance(layer, keras.layers.InputLayer)
              and layer.name != PREPROCESS_LAYER]
    if before:
        return False, f"layers {before} run before the base and may differ every step"
    if _has_active_dropout(model, base):
        return False, ("the base contains Dropout that runs during training (the model was "
                       "built with bn_policy='train'); build it with bn_policy='frozen'")
    if augment is not None and augment_passes < 1:
        return False, ("augmentation runs before the base (pass augment_passes=K to cache "
                       "K augmented passes)")
    if augment is not None:
        return True, f"base frozen; caching {augment_passes} augmented passes"
    return True, "base frozen and no augmentation before it"


def _has_active_dropout(model: keras.Model, base: keras.Model) -> bool:
    dropouts = (keras.layers.Dropout, keras.layers.SpatialDropout2D)
    return not base_called_in_inference(model) and any(
        isinstance(layer, dropouts) and float(layer.rate) > 0 for layer in base.layers
    )


class FeatureDatasets(NamedTuple):
    """What a trainer needs to fit :func:`head_model` on cached features.

    Attributes:
        train: callable ``epoch -> tf.data.Dataset`` of batched ``(features,
            labels)``, shuffled in an order that is a pure function of seed and epoch.
        val: batched ``(features, labels)`` in data order, or None.
        train_arrays: ``(features, labels)`` of the first cached training pass, for
            a linear probe.
    """

    train: Callable[[int], tf.data.Dataset]
    val: tf.data.Dataset | None
    train_arrays: Features | None = None


def cached_feature_datasets(
    model: keras.Model,
    train: Any,
    val: Any,
    *,
    image_size: int,
    batch_size: int,
    cache: FeatureCache,
    seed: int,
    augment: Any = None,
    augment_passes: int = 0,
) -> FeatureDatasets:
    """Cache base features of ``train``/``val`` and serve them as datasets.

    With ``augment`` and ``augment_passes=K``, K augmented passes over ``train`` are
    cached and epoch ``e`` trains on pass ``e % K``; validation is never augmented.

    Args:
        model: keras.Model. A kerastl model whose base is frozen.
        train: training data (``ImageData``, ``(images, labels)`` arrays).
        val: validation data of the same kinds, or None.
        image_size: int. Input side; must match the model.
        batch_size: int. Batch size of the returned datasets and of extraction.
        cache: FeatureCache. Where features are kept.
        seed: int. Seeds the per-epoch shuffling.
        augment: optional. Augmentation (a Keras layer or callable).
        augment_passes: int. Augmented passes to cache. Defaults to 0.

    Returns:
        :class:`FeatureDatasets` ``(train, val)``.

    Raises:
        ConfigError: the cache does not apply (see :func:`cache_applies`).

    Example:
        >>> import numpy as np, kerastl
        >>> from kerastl.features import FeatureCache, cached_feature_datasets
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> data = (np.zeros((4, 32, 32, 3)), np.array([0, 1, 0, 1]))
        >>> datasets = cached_feature_datasets(model, data, None, image_size=32,
        ...     batch_size=2, cache=FeatureCache(), seed=0)
        >>> [tuple(f.shape) for f, _ in datasets.train(0)]
        [(2, 1, 1, 512), (2, 1, 1, 512)]
    """
    if not isinstance(augment_passes, int) or augment_passes < 0:
        raise ConfigError(
            f"augment_passes must be a non-negative int; received {augment_passes!r}."
        )
    applies, reason = cache_applies(model, augment, augment_passes=augment_passes)
    if not applies:
        raise ConfigError(f"The feature cache does not apply to this run: {reason}.")
    _check_image_size(model, image_size)
    extractor = feature_extractor(model)

    def cached(data: Any, augment_pass: int | None) -> Features:
        pass_augment = augment if augment_pass is not None else None
        # A cache on disk outlives this process: a file replaced since (cp -p keeps
        # size and time) must not match, so files are identified by their bytes.
        fingerprint = data_fingerprint(data, content=cache.directory is not None)
        key = cache_key(model, fingerprint, image_size, augment_pass, augment=pass_augment)

        def compute() -> Features:
            features, labels = run_extractor(extractor, data, batch_size=batch_size,
                                             augment=pass_augment)
            if labels is None:
                raise DataError("The feature cache needs labelled data; received images only.")
            return features, labels

        return cache.get_or_compute(key, compute)

    passes = ([cached(train, p) for p in range(augment_passes)] if augment is not None
              else [cached(train, None)])
    served = [_Served(*p) for p in passes]

    def train_epoch(epoch: int) -> tf.data.Dataset:
        from .data import epoch_seed

        source = served[epoch % len(served)]
        # The order ImageData.batches gives the image path, so both paths train alike.
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(source.rows)
        return source.batches(order, batch_size)

    val_dataset = None
    if val is not None:
        source = _Served(*cached(val, None))
        val_dataset = source.batches(np.arange(source.rows), batch_size)
    return FeatureDatasets(train_epoch, val_dataset, passes[0])


class _Served:
    """Cached arrays as batches in a given row order, without copying them per epoch."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.rows = len(features)
        self._features, self._labels = features, labels
        if isinstance(features, np.memmap):
            self._tensors = None  # over budget: each batch is read from the mapped file
        else:
            self._tensors = (tf.constant(features), tf.constant(labels))

    def batches(self, order: np.ndarray, batch_size: int) -> tf.data.Dataset:
        indices = tf.data.Dataset.from_tensor_slices(order.astype(np.int64)).batch(batch_size)
        if self._tensors is not None:
            features, labels = self._tensors
            dataset = indices.map(lambda i: (tf.gather(features, i), tf.gather(labels, i)))
        else:
            dataset = indices.map(self._read_mapped)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _read_mapped(self, indices):
        features, labels = tf.numpy_function(
            lambda i: (np.asarray(self._features[i]), np.asarray(self._labels[i])),
            [indices],
            (tf.as_dtype(self._features.dtype), tf.as_dtype(self._labels.dtype)),
        )
        features.set_shape((None, *self._features.shape[1:]))
        labels.set_shape((None, *self._labels.shape[1:]))
        return features, labels

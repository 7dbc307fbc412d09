"""Frozen features: compute the base once, then train the head on the cache.

When the base of a kerastl model is frozen and no augmentation runs before it, every
epoch pushes the same images through the same function. Computing the base output
once and training only the head on it gives the same model for a fraction of the
cost (the Keras transfer-learning guide's "feature extraction" recipe, made safe):

* :func:`extract_features` / :func:`run_extractor` run the model's own
  preprocessing and base (:func:`kerastl.models.build.feature_extractor`) over any data
  :func:`kerastl.data.arrays.image_batches` accepts.
* :func:`cache_applies` says whether the cache trains the same model (frozen base,
  no active dropout, no augmentation unless K augmented passes are cached).
* :func:`cached_feature_datasets` gives a trainer what it needs: a reproducibly
  shuffled training dataset per epoch and a validation dataset, both of features,
  kept by a :class:`kerastl.models.feature_cache.FeatureCache`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import keras  # noqa: E402
import numpy as np
import tensorflow as tf

from ..core import backend as _backend  # noqa: F401
from ..core.console import batches_in, progress
from ..core.errors import ConfigError, DataError
from ..data.arrays import image_batches
from ..data.image_data import epoch_seed
from .build import build_model, feature_extractor
from .feature_cache import FeatureCache, Features, base_digest, cache_key, data_fingerprint
from .freezing import PREPROCESS_LAYER, base_called_in_inference, find_backbone
from .worker_features import cached_on_workers, splits_extraction

# --feature-cache: "auto" trains frozen phases on cached base features when that
# trains the same model (see cache_applies); "off" always runs the images.


# ------------------------------------------------------------------------ extraction
# Images per forward pass when extracting features: enough pixels per call that the
# per-call overhead is small, few enough that the activations of the largest layer
# stay in cache and memory. MEASURED (benchmarks/results/extraction.json, images/s at
# batch 8/16/32/64 at 224x224 and 32..512 at 32x32): the rule's 16 at 224 was fastest
# for ResNet50 and MobileNetV2 and within 2.3 % of the best (64) for VGG16; its 256 at
# 32 was fastest for MobileNetV2 a=0.35 and within 6.1 % of the best (512) for VGG16
# and ResNet50, where 512 was 18 % slower for MobileNetV2.
EXTRACTION_PIXELS_PER_BATCH = 256 * 32 * 32
EXTRACTION_BATCH_RANGE = (16, 256)


def extraction_batch_size(image_size: int) -> int:
    """Images per forward pass for feature extraction at ``image_size``.

    A power of two holding about ``EXTRACTION_PIXELS_PER_BATCH`` pixels, within
    ``EXTRACTION_BATCH_RANGE``. Extraction is inference only, so its batch size
    changes nothing but speed; training batches are what ``batch_size`` sets.

    Args:
        image_size: int. Input side.

    Returns:
        The batch size.

    Example:
        >>> extraction_batch_size(32), extraction_batch_size(224)
        (256, 16)
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer; received {image_size!r}.")
    low, high = EXTRACTION_BATCH_RANGE
    fitting = max(1, EXTRACTION_PIXELS_PER_BATCH // (image_size * image_size))
    return max(low, min(high, 1 << (fitting.bit_length() - 1)))


def extract_features(
    model_or_backbone: keras.Model | str,
    data: Any,
    *,
    image_size: int | None = None,
    batch_size: int | None = None,
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
        batch_size: int, optional. Images per forward pass. Defaults to
            :func:`extraction_batch_size` of the input side.
        labels: array, optional. Labels of ``data`` when it is an image array.
        pooling: str, optional. ``"avg"``, ``"max"`` or ``None`` (feature maps).
        weights: ``"imagenet"``, ``None`` or a path; only used with a backbone name.
            Defaults to ``"imagenet"``.

    Returns:
        ``(features, labels)``; ``labels`` is None when ``data`` has none.

    Example:
        >>> import numpy as np
        >>> from kerastl.models.features import extract_features
        >>> features, _ = extract_features("VGG16", np.zeros((3, 32, 32, 3)),
        ...                                image_size=32, weights=None, pooling="avg")
        >>> features.shape, features.dtype
        ((3, 512), dtype('float32'))
    """
    if isinstance(model_or_backbone, str):
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
    batch_size: int | None = None,
    labels: np.ndarray | None = None,
    augment: Any = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run a feature extractor (or any image model) over ``data`` in inference mode.

    One pass yields features and labels together, so they stay aligned and the
    images are decoded once (``Model.predict`` would drop the labels).

    Args:
        extractor: keras.Model. E.g. from :func:`feature_extractor`, or reloaded.
        data: as in :func:`extract_features`. Images of another size are resized.
        batch_size: int, optional. Images per forward pass. Defaults to
            :func:`extraction_batch_size` of the extractor's input side.
        labels: array, optional. Labels when ``data`` is an image array.
        augment: callable, optional. Augmentation applied before the extractor (an
            ``ImageData`` applies it itself).

    Returns:
        ``(features float32, labels or None)``.

    Example:
        >>> import numpy as np, kerastl
        >>> from kerastl.models.features import feature_extractor, run_extractor
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> run_extractor(feature_extractor(model), np.zeros((2, 32, 32, 3)))[0].shape
        (2, 1, 1, 512)
    """
    size = tuple(extractor.input_shape[1:3])
    batch_size = batch_size or extraction_batch_size(int(size[0]))
    batches = image_batches(data, image_size=size[0], batch_size=batch_size, labels=labels,
                            augment=augment).with_options(_extraction_options())
    forward = _compiled_forward(extractor, size)
    # Where the number of images is known, features go straight into one array: a
    # list of batches concatenated at the end held them twice (4.9 GB + 4.9 GB for
    # 60,000 images at 128 px through MobileNetV2, benchmarks/data_scale.py).
    rows = None if isinstance(data, tf.data.Dataset) else _row_count(data)
    features, label_batches, filled = [], [], 0
    for element in progress(batches, total=batches_in(batches), label="Feature extraction"):
        images, batch_labels = element if isinstance(element, tuple) else (element, None)
        batch = forward(images).numpy()
        if rows is not None:
            if not features:
                features.append(np.empty((rows, *batch.shape[1:]), batch.dtype))
            features[0][filled:filled + len(batch)] = batch
            filled += len(batch)
        else:
            features.append(batch)
        if batch_labels is not None:
            label_batches.append(np.asarray(batch_labels))
    if not features:
        raise DataError(f"No images to extract features from; received {_describe(data)}.")
    stacked = features[0][:filled] if rows is not None else np.concatenate(features)
    return stacked, (np.concatenate(label_batches) if label_batches else None)


def _row_count(data: Any) -> int | None:
    if isinstance(data, tuple) and len(data) == 2:
        data = data[0]
    try:
        return len(data)
    except TypeError:
        return None


def _extraction_options() -> tf.data.Options:
    """tf.data without its autotuner for the extraction pass.

    MEASURED here (VGG16 at 32x32, 2,000 PNGs, batch 256, 2 cores, six passes each in
    one process): with tf.data's autotuner a pass took 2.75 s or 5.13 s, bimodal from
    pass to pass (4 of 6 slow); without it 2.79-2.90 s every time, the same as the
    forward passes alone on decoded batches (2.57 s) plus decoding (0.25 s).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


# One compiled forward pass per extractor, kept as long as the extractor lives: a
# fresh tf.function per call would retrace (about a second for ResNet50) on every
# pass, e.g. each augmented pass of the cache.
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_forward(extractor: keras.Model, size: tuple[int, int]):
    """``images -> float32 features`` as one graph for every batch size.

    The graph is traced for a batch of unknown size: a last, smaller batch would
    otherwise trace and optimise it again. MEASURED (VGG16 at 32x32, 1,600 + 400
    images, batch 256, mean of 3 processes each): the first pass cost 0.50 s more
    than the second traced per batch shape, 0.36 s traced once (issue 11). The cast to float32
    runs in the graph: NumPy's bfloat16 → float32 conversion (ml_dtypes) is several
    times slower. No autograph: nothing in a Keras forward pass needs it, and
    converting the model's Python costs a second per trace.
    """
    if extractor in _FORWARDS:
        return _FORWARDS[extractor]

    model = weakref.ref(extractor)  # the cached function must not keep its key alive

    def forward(images):
        return tf.cast(model()(_fit_images(images, size), training=False), tf.float32)

    function = tf.function(forward, autograph=False)

    def any_batch(images):
        images = tf.convert_to_tensor(images)
        spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
        return function.get_concrete_function(spec)(images)

    _FORWARDS[extractor] = any_batch
    return any_batch


def _fit_images(images, size: tuple[int, int]):
    """Float32 RGB images of the extractor's input size."""
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    if tuple(images.shape[1:3]) != size:
        images = tf.image.resize(images, size)
    return images


def _describe(data: Any) -> str:
    shape = getattr(data, "shape", None)
    return f"{type(data).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def _check_image_size(model: keras.Model, image_size: int | None) -> None:
    side = model.input_shape[1]
    if image_size is not None and int(image_size) != side:
        raise ConfigError(
            f"Model {model.name!r} takes {side}x{side} images; received image_size="
            f"{image_size}. Build the model with input_shape={image_size} or pass "
            f"image_size={side}."
        )


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
        >>> from kerastl.models.features import cache_applies
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> cache_applies(model, None)
        (True, 'base frozen and no augmentation before it')
    """
    base, _ = find_backbone(model)
    if base.trainable_weights:
        return False, (f"base has trainable layers ({len(base.trainable_weights)} trainable "
                       "weights), so its features change every step")
    # A multi-depth probe's pixel pooling (and the pixel blend's, ``blend_``-prefixed
    # beside it) reads the raw image beside the base: fixed.
    fixed = {PREPROCESS_LAYER, *(f"{prefix}pixels_{kind}" for prefix in ("", "blend_")
                                 for kind in ("scale", "pool", "flat"))}
    before = [layer.name for layer in model.layers[: model.layers.index(base)]
              if not isinstance(layer, keras.layers.InputLayer)
              and layer.name not in fixed]
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
    extraction_batch: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    log: list[str] | None = None,
) -> FeatureDatasets:
    """Cache base features of ``train``/``val`` and serve them as datasets.

    With ``augment`` and ``augment_passes=K``, K augmented passes over ``train`` are
    cached and epoch ``e`` trains on pass ``e % K``; validation is never augmented.

    Args:
        model: keras.Model. A kerastl model whose base is frozen.
        train: training data (``ImageData``, ``(images, labels)`` arrays).
        val: validation data of the same kinds, or None.
        image_size: int. Input side; must match the model.
        batch_size: int. Batch size of the returned datasets.
        cache: FeatureCache. Where features are kept.
        seed: int. Seeds the per-epoch shuffling.
        augment: optional. Augmentation (a Keras layer or callable).
        augment_passes: int. Augmented passes to cache. Defaults to 0.
        extraction_batch: int, optional. Images per forward pass of the base; only
            speed depends on it. Defaults to :func:`extraction_batch_size`.
        strategy: tf.distribute.Strategy, optional. Under several workers each
            extracts only its share and the features are gathered
            (:mod:`kerastl.models.worker_features`). Defaults to one process.
        log: list of str, optional. Receives, where workers split the extraction,
            a line saying how many images this worker extracted.

    Returns:
        :class:`FeatureDatasets` ``(train, val)``.

    Raises:
        ConfigError: the cache does not apply (see :func:`cache_applies`).

    Example:
        >>> import numpy as np, kerastl
        >>> from kerastl.models.features import FeatureCache, cached_feature_datasets
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
    model_digest = base_digest(model)  # hashes every weight: once for every entry
    shares: list[str] = []  # "rows this worker extracted of all", where workers split

    def cached(data: Any, augment_pass: int | None, what: str = "training") -> Features:
        pass_augment = augment if augment_pass is not None else None
        # A cache on disk outlives this process: a file replaced since (cp -p keeps
        # size and time) must not match, so files are identified by their bytes.
        fingerprint = data_fingerprint(data, content=cache.directory is not None)
        key = cache_key(model, fingerprint, image_size, augment_pass, augment=pass_augment,
                        model_digest=model_digest)

        def extract(part: Any) -> Features:
            features, labels = run_extractor(extractor, part, batch_size=extraction_batch,
                                             augment=pass_augment)
            if labels is None:
                raise DataError("The feature cache needs labelled data; received images only.")
            return features, labels

        # Augmented passes are not split: see kerastl.models.worker_features.
        if augment_pass is not None or not splits_extraction(strategy, data):
            return cache.get_or_compute(key, lambda: extract(data))
        features, here = cached_on_workers(strategy, cache, key, extract, data)
        shares.append(f"{here} of {len(features[0])} {what}")
        return features

    passes = ([cached(train, p) for p in range(augment_passes)] if augment is not None
              else [cached(train, None)])
    served = [_Served(*p) for p in passes]

    def train_epoch(epoch: int) -> tf.data.Dataset:
        source = served[epoch % len(served)]
        # The order ImageData.batches gives the image path, so both paths train alike.
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(source.rows)
        return source.batches(order, batch_size)

    val_dataset = None
    if val is not None:
        source = _Served(*cached(val, None, "validation"))
        val_dataset = source.batches(np.arange(source.rows),
                                     evaluation_batch_size(source, batch_size))
    if shares and log is not None:
        log.append(f"this worker extracted the features of {' and '.join(shares)} images, "
                   "the other workers the rest")
    return FeatureDatasets(train_epoch, val_dataset, passes[0])


# Validation on cached features reads big batches: evaluating 400 VGG16 features in
# 13 batches of 32 took 50 ms an epoch, almost all of it per-batch calls (issue 11);
# the result does not depend on the batch. Capped in bytes for large feature maps.
EVALUATION_BYTES_PER_BATCH = 16 * 2**20


def evaluation_batch_size(served: _Served, batch_size: int) -> int:
    """Rows per validation batch: whole multiples of ``batch_size`` up to 16 MiB."""
    row_bytes = max(1, served.row_bytes)
    fitting = max(1, EVALUATION_BYTES_PER_BATCH // row_bytes // batch_size)
    needed = -(-served.rows // batch_size)
    return batch_size * max(1, min(fitting, needed))


class _Served:
    """Cached arrays as batches in a given row order, without copying them per epoch."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.rows = len(features)
        self.row_bytes = int(features[:1].nbytes)
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

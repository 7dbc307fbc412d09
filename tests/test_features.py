"""Frozen features: extractor/head split, the feature cache, scikit-learn heads."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import kerastl
import kerastl.core.version
from kerastl.core.errors import ConfigError, DataError
from kerastl.models.build import feature_extractor, head_model
from kerastl.models.feature_cache import FeatureCache, cache_key, data_fingerprint
from kerastl.models.features import cache_applies, cached_feature_datasets, extract_features
from kerastl.models.sklearn_head import SKLEARN_HEADS, SklearnClassifier, fit_sklearn_head
from kerastl.models.worker_features import splits_extraction, worker_count

from .numerics import VGG16_FORWARD, assert_close

SIZE = 32


def small_model(backbone: str = "VGG16", size: int = SIZE, **kwargs) -> keras.Model:
    kwargs = {"head": "avg", "dense_units": (8,), "dropout": 0.5, **kwargs}
    return kerastl.build_model(backbone, 3, input_shape=size, weights=None, **kwargs)


def random_images(n: int = 6, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def base_features(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """What the full model's head sees, computed without kerastl.models.features."""
    preprocessed = model.get_layer("preprocess")(images)
    return np.asarray(model.get_layer("backbone")(preprocessed, training=False))


def by_label(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (features, labels) of a dataset, rows sorted by label (labels are row ids)."""
    features = np.concatenate([f.numpy() for f, _ in dataset])
    labels = np.concatenate([y.numpy() for _, y in dataset])
    return features[np.argsort(labels)], labels


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """80 real digits, 8x8 upscaled to 32x32 RGB pixels in [0, 255]."""
    data = load_digits()
    images = data.images[:80].repeat(4, axis=1).repeat(4, axis=2)
    images = np.clip(images[..., None].repeat(3, axis=-1) * 16, 0, 255).astype("float32")
    return images, data.target[:80]


# ----------------------------------------------------------------------- extractor
@pytest.mark.numerics
def test_extracted_features_equal_backbone_of_preprocessed_images():
    model, images = small_model(), random_images(5)
    features, labels = extract_features(model, images, labels=np.arange(5), batch_size=2)
    assert features.dtype == np.float32
    # Batches of 2, 2, 1 against one of 5: under AVX2 oneDNN runs another kernel for the
    # batch of 1 (measured 8.8e-7, 2e-6 of the scale); on AVX-512 they are bit-identical.
    assert_close(features, base_features(model, images), VGG16_FORWARD)
    np.testing.assert_array_equal(labels, np.arange(5))
    assert feature_extractor(model).get_layer("backbone") is model.get_layer("backbone")
    pooled, _ = extract_features(model, images, pooling="max")
    assert_close(pooled, features.max(axis=(1, 2)), VGG16_FORWARD)


def test_extract_features_from_a_backbone_name():
    images = random_images(3)
    features, labels = extract_features("VGG16", images, image_size=SIZE, weights=None,
                                        pooling="avg")
    assert features.shape == (3, 512) and labels is None


def test_extract_features_rejects_other_image_size():
    with pytest.raises(ConfigError, match="image_size=64"):
        extract_features(small_model(), random_images(2), image_size=64)


@pytest.mark.numerics
def test_frozen_model_predictions_equal_head_of_features():
    model, images = small_model(), random_images(4)
    features, _ = extract_features(model, images)
    head = head_model(model)
    assert_close(model.predict(images, verbose=0), head.predict(features, verbose=0), VGG16_FORWARD)


@pytest.mark.numerics
def test_training_head_model_trains_the_full_models_head():
    model, images = small_model(), random_images(4)
    features, _ = extract_features(model, images)
    head = head_model(model)
    kernel = model.get_layer("predictions").kernel
    before = kernel.numpy().copy()
    head.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    head.train_on_batch(features, np.array([0, 1, 2, 0]))
    assert head.get_layer("predictions") is model.get_layer("predictions")
    assert not np.allclose(kernel.numpy(), before)
    assert_close(model.predict(images, verbose=0), head.predict(features, verbose=0), VGG16_FORWARD)


# --------------------------------------------------------------------------- cache
def test_cache_key_changes_with_everything_features_depend_on():
    model = small_model()
    key = cache_key(model, "data-a", SIZE)
    assert cache_key(model, "data-a", SIZE) == key
    assert cache_key(model, "data-b", SIZE) != key
    assert cache_key(small_model(size=48), "data-a", 48) != key
    assert cache_key(small_model("MobileNetV2"), "data-a", SIZE) != key
    assert cache_key(model, "data-a", SIZE, augment_pass=0) != key
    kernel = model.get_layer("backbone").get_layer("block5_conv3").kernel
    kernel.assign(kernel + 1.0)
    assert cache_key(model, "data-a", SIZE) != key


def test_second_call_hits_the_cache_and_changed_weights_miss():
    model = small_model()
    data = (random_images(4), np.arange(4))
    cache = FeatureCache()
    first = cached_feature_datasets(model, data, None, image_size=SIZE, batch_size=2,
                                    cache=cache, seed=0)
    second = cached_feature_datasets(model, data, None, image_size=SIZE, batch_size=2,
                                     cache=cache, seed=0)
    assert (cache.hits, cache.misses) == (1, 1)
    # Bit-identical: the hit serves back the very array the miss computed.
    np.testing.assert_array_equal(by_label(first.train(0))[0], by_label(second.train(0))[0])
    weight = model.get_layer("backbone").get_layer("block1_conv1").bias
    weight.assign(weight + 1.0)
    cached_feature_datasets(model, data, None, image_size=SIZE, batch_size=2,
                            cache=cache, seed=0)
    assert cache.misses == 2
    assert "1 hits, 2 misses" in cache.explain()


@pytest.mark.numerics
def test_epoch_order_is_a_function_of_seed_and_epoch():
    model = small_model()
    data = (random_images(8), np.arange(8))
    train, val, _ = cached_feature_datasets(model, data, data, image_size=SIZE, batch_size=3,
                                         cache=FeatureCache(), seed=7)

    def order(dataset):
        return np.concatenate([y.numpy() for _, y in dataset]).tolist()

    assert order(train(1)) == order(train(1))
    assert order(train(1)) != order(train(2))
    assert sorted(order(train(1))) == list(range(8))
    assert order(val) == list(range(8))
    assert_close(by_label(train(1))[0], base_features(model, data[0]), VGG16_FORWARD)


def test_over_budget_features_are_memory_mapped_from_disk(tmp_path):
    features, labels = np.arange(24, dtype="float32").reshape(4, 6), np.arange(4)
    cache = FeatureCache(tmp_path, memory_budget_bytes=16)
    got = cache.get_or_compute("k1", lambda: (features, labels))
    assert isinstance(got[0], np.memmap) and (tmp_path / "k1.npy").is_file()
    np.testing.assert_array_equal(got[0], features)
    np.testing.assert_array_equal(got[1], labels)
    again = FeatureCache(tmp_path, memory_budget_bytes=16)  # a later run
    np.testing.assert_array_equal(again.get_or_compute("k1", pytest.fail)[0], features)
    assert (again.hits, again.misses) == (1, 0)
    assert not list(tmp_path.glob("*.tmp"))


def test_memory_mapped_cache_serves_the_same_batches_as_memory():
    model = small_model()
    data = (random_images(5), np.arange(5))

    def batches(cache):
        train, _, _ = cached_feature_datasets(model, data, None, image_size=SIZE, batch_size=2,
                                           cache=cache, seed=3)
        return [(f.numpy(), y.numpy()) for f, y in train(4)]

    tiny = FeatureCache(memory_budget_bytes=0)
    # Bit-identical: the same extraction, then the same bytes from memory or from disk.
    for (f1, y1), (f2, y2) in zip(batches(FeatureCache()), batches(tiny), strict=True):
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(y1, y2)
    assert "memory-mapped: 1 entries" in tiny.explain()


def test_corrupt_cache_file_is_recomputed_with_a_warning(tmp_path):
    features, labels = np.ones((3, 5), "float32"), np.arange(3)
    FeatureCache(tmp_path).get_or_compute("k", lambda: (features, labels))
    path = tmp_path / "k.npy"
    path.write_bytes(path.read_bytes()[:-8])  # truncated, as by a full disk
    cache = FeatureCache(tmp_path)
    with pytest.warns(UserWarning, match="unreadable"):
        got = cache.get_or_compute("k", lambda: (features, labels))
    np.testing.assert_array_equal(got[0], features)
    assert cache.misses == 1
    assert FeatureCache(tmp_path).get_or_compute("k", pytest.fail)[0].shape == (3, 5)


def test_contains_agrees_with_what_get_or_compute_would_find(tmp_path):
    # Workers agree on hits before extracting shares: a wrong answer would hang them.
    features, labels = np.ones((3, 5), "float32"), np.arange(3)
    cache = FeatureCache(tmp_path)
    assert not cache.contains("k")
    cache.get_or_compute("k", lambda: (features, labels))
    assert cache.contains("k") and FeatureCache(tmp_path).contains("k")  # a later run
    (tmp_path / "k.npy").write_bytes(b"not an array")
    with pytest.warns(UserWarning, match="unreadable"):
        assert not FeatureCache(tmp_path).contains("k")
    memory = FeatureCache()
    memory.get_or_compute("m", lambda: (features, labels))
    assert memory.contains("m") and not memory.contains("k")


def test_one_process_extracts_every_image_itself():
    data = kerastl.from_arrays(np.zeros((4, 8, 8), "uint8"), [0, 1, 0, 1])
    assert worker_count(tf.distribute.get_strategy()) == 1 and worker_count(None) == 1
    assert not splits_extraction(tf.distribute.get_strategy(), data)


def test_cache_rejects_keys_that_are_not_file_names(tmp_path):
    with pytest.raises(ConfigError, match="received '../escape'"):
        FeatureCache(tmp_path).get_or_compute("../escape", pytest.fail)


# ----------------------------------------------------------------- when it applies
def test_cache_applies_only_to_a_frozen_base_without_augmentation():
    model = small_model()
    assert cache_applies(model, None) == (True, "base frozen and no augmentation before it")
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    applies, reason = cache_applies(model, flip)
    assert not applies and "augment_passes=K" in reason
    assert cache_applies(model, flip, augment_passes=2)[0]
    kerastl.set_regime(model, "finetune", unfreeze_blocks=1)
    applies, reason = cache_applies(model, None)
    assert not applies and "trainable layers" in reason
    with pytest.raises(ConfigError, match="trainable layers"):
        cached_feature_datasets(model, (random_images(2), np.arange(2)), None,
                                image_size=SIZE, batch_size=2, cache=FeatureCache(), seed=0)


def test_augmented_passes_are_cached_and_reused_every_k_epochs():
    model = small_model()
    data = (random_images(6), np.arange(6))
    cache = FeatureCache()
    train, _, _ = cached_feature_datasets(
        model, data, None, image_size=SIZE, batch_size=4, cache=cache, seed=0,
        augment=keras.layers.RandomFlip("horizontal_and_vertical", seed=1), augment_passes=2,
    )
    assert cache.misses == 2
    pass_0, pass_1, pass_0_again = (by_label(train(e))[0] for e in (0, 1, 2))
    np.testing.assert_array_equal(pass_0, pass_0_again)  # the cached pass, served again
    assert not np.allclose(pass_0, pass_1)


def test_datasets_cannot_be_fingerprinted():
    dataset = tf.data.Dataset.from_tensor_slices(random_images(2)).batch(2)
    with pytest.raises(DataError, match="tf.data.Dataset"):
        data_fingerprint(dataset)


# ------------------------------------------------------------------ sklearn heads
@pytest.mark.numerics
@pytest.mark.parametrize("kind", SKLEARN_HEADS)
def test_sklearn_head_fits_digits_and_reloads_with_identical_predictions(kind, digits, tmp_path):
    images, labels = digits
    model = small_model(dense_units=(), dropout=0.0)
    classifier = SklearnClassifier.fit(model, (images, labels), kind, image_size=SIZE)
    predicted = classifier.predict(images)
    # Features of random weights still separate the 80 training digits. Measured with
    # model seeds 0-4, on AVX-512 and under ONEDNN_MAX_CPU_ISA=AVX2 alike: logreg and
    # linear-svm 1.0 every time, knn 0.938-0.963; the bar sits well below the worst.
    assert (predicted == labels).mean() > 0.8
    classifier.save(tmp_path)
    config = json.loads((tmp_path / "head.json").read_text())
    assert config["kind"] == kind
    np.load(tmp_path / "head.npz", allow_pickle=False).close()  # plain arrays only
    reloaded = SklearnClassifier.load(tmp_path)
    np.testing.assert_array_equal(reloaded.predict(images[:24]), predicted[:24])
    np.testing.assert_allclose(reloaded.predict_proba(images[:24]),
                               classifier.predict_proba(images[:24]), rtol=1e-5, atol=1e-6)


def test_fit_sklearn_head_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="kind='forest'"):
        fit_sklearn_head(np.zeros((4, 2)), np.array([0, 1, 0, 1]), "forest")


# ------------------------------------------------------------ what the key covers
def _with_weights_of(reference: keras.Model, backbone: str, **backbone_kwargs) -> keras.Model:
    """A model of the same backbone with other settings and the base weights of ``reference``."""
    model = small_model(backbone, backbone_kwargs=backbone_kwargs or None)
    model.get_layer("backbone").set_weights(reference.get_layer("backbone").get_weights())
    return model


def test_cache_key_covers_weightless_backbone_settings():
    reference = small_model("MobileNetV3Small")
    key = cache_key(reference, "data", SIZE)
    # include_preprocessing adds a Rescaling layer, which has no weights.
    no_rescaling = _with_weights_of(reference, "MobileNetV3Small", include_preprocessing=False)
    assert cache_key(no_rescaling, "data", SIZE) != key
    # Rebuilt with the same settings and weights: auto-numbered layer names differ
    # ("re_lu_24"), the key does not.
    assert cache_key(_with_weights_of(reference, "MobileNetV3Small"), "data", SIZE) == key


def test_cache_key_covers_library_versions_and_the_decoder(monkeypatch):
    import kerastl.data.image_data

    model = small_model()
    key = cache_key(model, "data", SIZE)
    monkeypatch.setattr(keras, "__version__", "0.0.0")
    assert cache_key(model, "data", SIZE) != key
    monkeypatch.undo()
    monkeypatch.setattr(kerastl.core.version, "__version__", "0.0.0")
    assert cache_key(model, "data", SIZE) != key
    monkeypatch.undo()
    data = kerastl.from_arrays(np.zeros((2, 8, 8), "uint8"), [0, 1])
    fingerprint = data.fingerprint()
    monkeypatch.setattr(kerastl.data.image_data, "DECODE_METHOD", "another resampling")
    assert data.fingerprint() != fingerprint
    assert cache_key(model, "data", SIZE) != key


def test_a_file_replaced_with_its_size_and_mtime_misses_the_disk_cache(tmp_path):
    # `cp -p` / `rsync -t` keep size and modification time; the bytes differ.
    from PIL import Image

    folder = tmp_path / "data"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((SIZE, SIZE, 3), 40 * i + (label == "b") * 100, "uint8")
            Image.fromarray(pixels).save(folder / label / f"{i}.bmp")  # fixed-size files
    data = kerastl.data.folders.from_folder(folder)
    model = small_model()

    def features(data, cache):
        train, _, _ = cached_feature_datasets(model, data, None, image_size=SIZE, batch_size=4,
                                           cache=cache, seed=0)
        return by_label(train(0))[0]

    before = features(data, FeatureCache(tmp_path / "cache"))
    target = folder / "a" / "0.bmp"
    stat = target.stat()
    Image.fromarray(np.full((SIZE, SIZE, 3), 255, "uint8")).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    reread = kerastl.data.folders.from_folder(folder)
    assert reread.fingerprint() == data.fingerprint()  # in memory: stat only, cheap
    cache = FeatureCache(tmp_path / "cache")
    after = features(reread, cache)
    assert (cache.hits, cache.misses) == (0, 1)
    assert not np.allclose(after, before)

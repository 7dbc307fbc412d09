"""Fashion-MNIST loading from idx files, and the shipped data_samples folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerastl.core.errors import DataError
from kerastl.data import datasets
from kerastl.data.datasets import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    fashion_mnist,
    read_idx,
    select_classes,
    write_idx,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples" / "fashion"


def _fake_fashion(directory: Path, *, gz: bool = True, n_train: int = 20, n_test: int = 10):
    """Write the four Fashion-MNIST idx files with tiny, recognisable content.

    Every image is filled with its own label, so a test can check that images and
    labels stay paired after selection and relabelling.
    """
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.broadcast_to(labels[:, None, None], (n, 28, 28)).astype(np.uint8)
        write_idx(directory / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{stem}-labels-idx1-ubyte{suffix}", labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_plain_idx(tmp_path, gz):
    _fake_fashion(tmp_path, gz=gz)
    (x_train, y_train), (x_test, y_test), names = fashion_mnist(tmp_path)
    assert x_train.shape == (20, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (10, 28, 28)
    assert y_train.dtype == np.int64 and y_train.tolist() == list(range(10)) * 2
    assert np.all(x_train[:, 0, 0] == y_train)
    assert names == list(FASHION_MNIST_CLASSES)


def test_classes_selects_and_relabels_in_given_order(tmp_path):
    _fake_fashion(tmp_path)
    (x_train, y_train), (x_test, y_test), names = fashion_mnist(tmp_path, classes=[9, 5])
    assert names == ["ankle_boot", "sandal"]
    assert sorted(set(y_train.tolist())) == [0, 1] and len(y_train) == 4
    # Original class 9 images (filled with 9) now carry label 0.
    assert np.all(x_train[y_train == 0] == 9) and np.all(x_train[y_train == 1] == 5)
    assert np.all(x_test[y_test == 0] == 9)


@pytest.mark.parametrize("classes", [[10], [3, 3], [], [-1]])
def test_invalid_classes_are_quoted(tmp_path, classes):
    _fake_fashion(tmp_path)
    with pytest.raises(DataError, match=r"classes=\["):
        fashion_mnist(tmp_path, classes=classes)


def test_environment_variable_is_used_without_path(tmp_path, monkeypatch):
    _fake_fashion(tmp_path, n_train=30)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    (x_train, _), _, _ = fashion_mnist()
    assert len(x_train) == 30


def test_missing_files_name_places_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "empty"))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(ValueError) as info:  # DataError is a ValueError
        fashion_mnist()
    message = str(info.value)
    assert isinstance(info.value, DataError)
    assert str(tmp_path / "empty") in message and str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message and "path=" in message


def test_download_is_used_only_when_asked(tmp_path, monkeypatch):
    import keras

    (tmp_path / "src").mkdir()
    tiny = _fake_fashion(tmp_path / "src")
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data",
                        lambda: (tiny["train"], tiny["test"]))
    with pytest.raises(DataError):
        fashion_mnist(tmp_path / "nothing")
    (x_train, _), (x_test, _), _ = fashion_mnist(tmp_path / "nothing", download=True)
    assert len(x_train) == 20 and len(x_test) == 10


def test_truncated_file_is_named(tmp_path):
    _fake_fashion(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        fashion_mnist(tmp_path)


def test_cut_off_gzip_stream_is_named(tmp_path):
    _fake_fashion(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        fashion_mnist(tmp_path)


def test_wrong_magic_number_is_rejected(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + bytes(16))
    with pytest.raises(DataError, match="not an idx file.*89504e47"):
        read_idx(path)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip_keeps_values_and_dtype(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == "uint8":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    back = read_idx(write_idx(tmp_path / "a-idx3.gz", array))
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)
    back[0, 0, 0] = 1  # callers may modify what they loaded


def test_select_classes_mismatch_ignores_other_labels():
    images, labels = select_classes(np.arange(6), np.array([0, 7, 2, 7, 9, 2]), [2, 7])
    assert images.tolist() == [1, 2, 3, 5] and labels.tolist() == [1, 0, 1, 0]


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist absent")
def test_debian_package_gives_the_official_splits():
    (x_train, y_train), (x_test, y_test), _ = fashion_mnist(DEBIAN_FASHION_MNIST)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


@pytest.mark.parametrize("split, per_class", [("train", 100), ("val", 30), ("test", 60)])
def test_shipped_samples_are_target_class_pngs(split, per_class):
    folders = sorted(p.name for p in (SAMPLES / split).iterdir())
    assert folders == sorted(FASHION_MNIST_CLASSES[5:])
    for folder in folders:
        files = sorted((SAMPLES / split / folder).glob("*.png"))
        assert len(files) == per_class
        with Image.open(files[0]) as image:
            assert image.size == (28, 28) and image.mode == "L"


def test_shipped_train_and_val_samples_do_not_overlap():
    # Both come from the official training split; file names are its indices.
    for name in FASHION_MNIST_CLASSES[5:]:
        train = {p.stem for p in (SAMPLES / "train" / name).glob("*.png")}
        val = {p.stem for p in (SAMPLES / "val" / name).glob("*.png")}
        assert train and val and not train & val


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist absent")
def test_shipped_samples_match_the_official_images():
    (x_train, y_train), (x_test, y_test), _ = fashion_mnist(DEBIAN_FASHION_MNIST)
    for split, images, labels in (("val", x_train, y_train), ("test", x_test, y_test)):
        for class_id in (5, 9):
            path = next((SAMPLES / split / FASHION_MNIST_CLASSES[class_id]).glob("*.png"))
            index = int(path.stem)
            assert labels[index] == class_id
            assert np.array_equal(np.asarray(Image.open(path)), images[index])

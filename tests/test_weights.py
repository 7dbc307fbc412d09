"""Weights: local files round-trip; bad files and offline downloads fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

import kerastl
from kerastl.models.weights import file_sha256, save_base_weights


@pytest.fixture
def saved_base(tmp_path):
    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                backbone_kwargs={"alpha": 0.35})
    path = save_base_weights(model.get_layer("backbone"), tmp_path / "base.weights.h5")
    return model, path


def test_weights_file_rebuilds_identical_base_outputs(saved_base):
    model, path = saved_base
    rebuilt = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=path,
                                  backbone_kwargs={"alpha": 0.35}, weights_hash=file_sha256(path))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    original = model.get_layer("backbone")(model.get_layer("preprocess")(images))
    again = rebuilt.get_layer("backbone")(rebuilt.get_layer("preprocess")(images))
    # Bit-identical: the same weights through the same operations on the same batch.
    np.testing.assert_array_equal(np.asarray(original), np.asarray(again))


def test_weights_file_works_at_another_input_size(saved_base):
    _, path = saved_base
    model = kerastl.build_model("MobileNetV2", 3, input_shape=64, weights=path,
                                backbone_kwargs={"alpha": 0.35})
    assert model.input_shape == (None, 64, 64, 3)


def test_truncated_weights_file_gives_a_clear_error(saved_base, tmp_path):
    _, path = saved_base
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(kerastl.WeightsError, match="truncated.weights.h5.*not a readable HDF5"):
        kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=truncated,
                            backbone_kwargs={"alpha": 0.35})


def test_weights_of_another_architecture_give_a_clear_error(saved_base):
    _, path = saved_base
    with pytest.raises(kerastl.WeightsError, match="does not match the VGG16 base"):
        kerastl.build_model("VGG16", 3, input_shape=32, weights=path)


def test_wrong_hash_is_refused(saved_base):
    _, path = saved_base
    with pytest.raises(kerastl.WeightsError, match="SHA-256"):
        kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=path,
                            backbone_kwargs={"alpha": 0.35}, weights_hash="0" * 64)


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(kerastl.WeightsError, match="nope.weights.h5"):
        kerastl.build_model("VGG16", 3, input_shape=32, weights=tmp_path / "nope.weights.h5")


def test_offline_imagenet_download_names_url_and_both_remedies(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service "
                        "not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(kerastl.WeightsError) as info:
        kerastl.build_model("VGG16", 3, input_shape=32)
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "weights=PATH" in message and str(tmp_path / "kh" / "models") in message

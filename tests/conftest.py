"""Shared fixtures: tiny inputs, weights=None, one cached base per backbone."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastl.backbones import REGISTRY  # noqa: E402

ALL_BACKBONES = list(REGISTRY)
# Small, fast members for end-to-end tests; the registry-wide tests use them all.
SMALL_BACKBONE = "MobileNetV2"


def test_size(name: str) -> int:
    """Smallest square input the backbone accepts (32 for most)."""
    return max(32, REGISTRY[name].min_size)


test_size.__test__ = False  # not a test


@pytest.fixture(autouse=True)
def _clear_keras_session():
    yield
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")


@functools.lru_cache(maxsize=1)
def built_model(name: str) -> keras.Model:
    """One frozen kerastl model per backbone, reused by the registry-wide tests."""
    import kerastl

    return kerastl.build_model(
        name, 3, input_shape=test_size(name), weights=None, head="avg", dense_units=(8,)
    )


def independent_param_count(weights) -> int:
    """Count parameters with NumPy only, independently of kerastl."""
    return int(sum(np.prod(w.shape) for w in weights))


def is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)

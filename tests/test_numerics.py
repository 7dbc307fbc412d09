"""The shared tolerances can fail, and the header says which machine a report came from."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import pytest_report_header
from .numerics import (
    BF16_UNIT_ROUNDOFF,
    VGG16_FORWARD,
    assert_close,
    assert_same_training,
    reordered,
)


def _features(seed: int = 0) -> np.ndarray:
    """ReLU-like features: scale ~1, many values at or near zero."""
    return np.maximum(np.random.default_rng(seed).normal(size=(5, 64)), 0).astype("float32")


def test_reordering_noise_near_zero_passes_but_a_real_difference_fails():
    desired = _features()
    # What another summation order does: noise of ~1e-6 of the scale, also on zeros.
    noise = np.random.default_rng(1).normal(scale=1e-6 * desired.max(), size=desired.shape)
    assert_close(desired + noise, desired, VGG16_FORWARD)
    with pytest.raises(AssertionError, match="sqrt"):
        assert_close(desired * 1.01, desired, VGG16_FORWARD)  # e.g. another preprocessing
    with pytest.raises(AssertionError):
        assert_close(_features(seed=2), desired, VGG16_FORWARD)


def test_bfloat16_tolerance_is_wider_by_the_ratio_of_unit_roundoffs():
    float32, bfloat16 = reordered(100, 3), reordered(100, 3, BF16_UNIT_ROUNDOFF)
    assert bfloat16.rtol / float32.rtol == pytest.approx(2.0**16)


def test_same_training_is_relative_to_the_distance_travelled():
    initial = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    update = np.float32(1e-2) * np.sign(initial)
    trained = initial - update
    tol = reordered(terms=4096, layers=106)
    assert_same_training(trained + 1e-3 * update, trained, initial, tol)  # rounding-sized
    with pytest.raises(AssertionError, match="moved"):
        assert_same_training(initial - 2 * update, trained, initial, tol)  # a doubled step
    with pytest.raises(AssertionError):  # a frozen weight must stay where it was
        assert_same_training(initial + 1e-4, initial, initial, tol)


def test_header_names_the_cpu_flags_onednn_settings_and_default_precision(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    header = "\n".join(pytest_report_header(None))
    for flag in ("avx2=", "avx512f=", "avx512_bf16=", "amx_bf16="):
        assert flag in header
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in header and "TF_ENABLE_ONEDNN_OPTS=(unset)" in header
    # Whatever this CPU has, oneDNN capped at AVX2 runs no native bfloat16.
    assert "default precision: float32" in header

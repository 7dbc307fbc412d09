"""Shared fixtures: tiny inputs, weights=None, one cached base per backbone."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastl.models.backbones import REGISTRY  # noqa: E402

ALL_BACKBONES = list(REGISTRY)
# Small, fast members for end-to-end tests; the registry-wide tests use them all.
SMALL_BACKBONE = "MobileNetV2"


def test_size(name: str) -> int:
    """Smallest square input the backbone accepts (32 for most)."""
    return max(32, REGISTRY[name].min_size)


test_size.__test__ = False  # not a test

# CPU flags that change which kernels run (and so the last bits of every float), and
# the settings that cap them: printed in the header so a failure report names its CPU.
HEADER_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
HEADER_ENV = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")


def pytest_report_header(config) -> list[str]:
    from kerastl.training import device_facts, precision, runtime

    flags = device_facts.detect_cpu_flags()
    shown = " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in HEADER_CPU_FLAGS)
    env = " ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in HEADER_ENV)
    try:
        facts = device_facts.DeviceFacts.detect()
        strategy = runtime.choose_strategy_name("auto", facts)
        precision, why = precision.precision_and_reason("auto", facts, strategy)
        policy = f"{precision} ({why})"
    except Exception as error:  # a header must never stop the run
        policy = f"unknown: {error}"
    return [f"kerastl CPU: {shown}", f"kerastl oneDNN: {env}",
            f"kerastl default precision: {policy}"]


# The suite's slowest files, slowest first (per-file seconds from `pytest --durations`):
# pytest-xdist hands whole files to its two workers in collection order
# (`--dist loadfile --no-loadscope-reorder` in pyproject.toml), so the long ones start
# first and the many short ones fill the gaps at the end. By default xdist puts files
# with the most tests first (the registry-wide ones, each test short), and a
# five-minute file starting last left one worker idle for minutes.
# Seconds measured 2026-12-07 (2 workers, 1251 s in all): notebooks 314, interpret 305,
# deploy 264, model 190, run 147, first_hour 146, cli 144, reliability 141, blend 120,
# distributed 94, training 73, compare 63, multi_depth 58, freezing 58.
SLOWEST_FILES = ("test_notebooks.py", "test_interpret.py", "test_deploy.py", "test_model.py",
                 "test_run.py", "test_first_hour.py", "test_cli.py", "test_reliability.py",
                 "test_blend.py", "test_distributed.py", "test_training.py",
                 "test_compare.py", "test_multi_depth.py", "test_freezing.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))


@pytest.fixture(autouse=True)
def _clear_keras_session():
    yield
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session", params=ALL_BACKBONES)
def registry_model(request) -> tuple[str, keras.Model]:
    """One frozen kerastl model per registered backbone, shared by every registry test.

    Session scope with parameters makes pytest run all tests of one backbone before
    building the next, so each of the 40 architectures is built once per worker: keep
    the tests that use it in test_model.py, one file that one worker runs.
    """
    import kerastl

    name = request.param
    model = kerastl.build_model(
        name, 3, input_shape=test_size(name), weights=None, head="avg", dense_units=(8,)
    )
    yield name, model
    kerastl.set_regime(model, "frozen")


def source_backbone() -> dict:
    """The shipped pretrained source backbone (``data_samples/source/*.json``).

    MobileNetV3Small alpha=0.75 pretrained by kerastl on five other Fashion-MNIST
    classes: non-degenerate features at any input size. Tests that compare trained
    weights start from it, because a randomly initialised base with BatchNorm in
    inference mode outputs ~1e-12 features (vanishing gradients: any two runs match).

    Returns:
        ``{"backbone", "backbone_kwargs", "weights"}`` for ``kerastl.build_model``
        (``weights`` is the path of the shipped file).
    """
    from pathlib import Path

    from kerastl.data.samples import source_backbone as shipped

    info = shipped()
    if info is None or not Path(info["weights"]).is_file():
        pytest.skip("data_samples/source holds no pretrained source backbone")
    return {"backbone": info["backbone"], "backbone_kwargs": dict(info.get("backbone_kwargs", {})),
            "weights": info["weights"]}


def source_model(num_classes: int = 5, size: int = 32, **kwargs) -> keras.Model:
    """A kerastl model on the shipped source backbone (avg head, no hidden layer)."""
    import kerastl

    source = source_backbone()
    kwargs = {"head": "avg", "dense_units": (), "dropout": 0.0, **kwargs}
    return kerastl.build_model(source["backbone"], num_classes, input_shape=size,
                               weights=source["weights"],
                               backbone_kwargs=source["backbone_kwargs"], **kwargs)


def independent_param_count(weights) -> int:
    """Count parameters with NumPy only, independently of kerastl."""
    return int(sum(np.prod(w.shape) for w in weights))


def is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)

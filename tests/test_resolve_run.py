"""A run is resolved once: one registry lookup, a read-only config, a one-way trip.

The trip of the configuration is followed with a trace function: every call in kerastl that
receives the ``RunConfig`` as an argument, by module. A configuration resolved in one
place visits few modules, each once or twice, and none below ``recipes``.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading

import pytest
from sklearn.datasets import load_digits

import kerastl
from kerastl.commands.flags import config_from_args
from kerastl.config.schema import RunConfig
from kerastl.models import backbones
from kerastl.recipes.fit import fit
from kerastl.recipes.resolve import resolve_run

from .conftest import source_backbone

LAYERS_BELOW_RECIPES = ("core", "config", "data", "models", "training", "outputs")


def _digits_splits(n_train: int = 48, n_val: int = 24) -> kerastl.DataSplits:
    digits = load_digits()
    keep = digits.target < 3
    images, labels = (digits.images[keep] * 16).astype("uint8"), digits.target[keep]
    names = ["0", "1", "2"]
    end = n_train + n_val
    return kerastl.DataSplits(
        train=kerastl.from_arrays(images[:n_train], labels[:n_train], class_names=names),
        val=kerastl.from_arrays(images[n_train:end], labels[n_train:end], class_names=names),
        test=None, class_names=names)


class _Trip:
    """Counts registry lookups and the calls that receive a RunConfig, by module."""

    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.entries: collections.Counter = collections.Counter()

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("kerastl"):
            return
        code = frame.f_code
        if code is backbones.get_backbone.__code__:
            self.lookups.append(str(frame.f_locals.get("name")))
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        received = [frame.f_locals.get(name) for name in names if name != "self"]
        if any(isinstance(value, RunConfig) for value in received) \
                and _kerastl_caller(frame.f_back) != module:
            self.entries[module] += 1

    # A global trace function, not a profiler: it is called once per Python frame
    # (returning None: no line events), not on every call into C as well, which made
    # the traced auto run several times slower than the same run untraced.
    def __enter__(self) -> _Trip:
        self._before = (sys.gettrace(), threading.gettrace())  # coverage, a debugger
        sys.settrace(self)
        threading.settrace(self)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._before[0])
        threading.settrace(self._before[1])


def _kerastl_caller(frame) -> str:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("kerastl"):
            return name
        frame = frame.f_back
    return ""


@pytest.mark.parametrize("mode", ["auto", "frozen"])
def test_a_run_looks_its_backbone_up_once(tmp_path, mode, monkeypatch):
    # auto: probe, fine-tuning, pixel blend, evaluation; frozen: the feature cache.
    # Each of them used to find the backbone again by its name. Every lookup by name
    # goes through get_backbone's call of registry_key (a module global, so patching
    # it counts them); tracing the whole run instead made it twice as slow.
    source, lookups = source_backbone(), []
    key = backbones.registry_key
    monkeypatch.setattr(backbones, "registry_key",
                        lambda name: lookups.append(str(name)) or key(name))
    config = RunConfig(backbone=source["backbone"], backbone_kwargs=source["backbone_kwargs"],
                       weights=source["weights"], mode=mode, epochs=2, image_size=32,
                       batch_size=16, augment=[], precision="float32", verbose=0,
                       output=str(tmp_path / mode))
    result = fit(config, splits=_digits_splits())
    assert lookups == [source["backbone"]]
    assert (tmp_path / mode / "model.keras").is_file() and result.metrics["accuracy"] > 0


def test_the_configuration_travels_one_way_through_few_modules(tmp_path):
    argv = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--augment", "none",
            "--precision", "float32", "--verbose", "0", "--output", str(tmp_path / "run")]
    with _Trip() as trip:
        resolved, _ = resolve_run(config_from_args(argv), kind="train")
    assert trip.lookups == [resolved.backbone.name]
    assert max(trip.entries.values()) <= 2, trip.entries
    below = [m for m in trip.entries if m.split(".")[1] in LAYERS_BELOW_RECIPES
             and m not in ("kerastl.config.schema", "kerastl.config.validation")]
    assert below == [], f"modules below recipes read the RunConfig: {below}"


def test_the_resolved_run_is_read_only_and_is_what_config_yaml_records(tmp_path):
    result = fit(RunConfig(mode="frozen", epochs=1, image_size=32, batch_size=16, weights=None,
                           precision="float32", verbose=0, output=str(tmp_path / "run")),
                 splits=_digits_splits())
    with pytest.raises(dataclasses.FrozenInstanceError, match="image_size"):
        result.config.image_size = 64
    # The YAML of the frozen config is that of a writable one (lists, not tuples).
    assert (tmp_path / "run" / "config.yaml").read_text() == result.config.replace().to_yaml()
    assert result.config == result.config.replace()  # equal values, whichever class
    assert result.config.replace(image_size=64).image_size == 64  # a writable copy
    assert [p.name for p in result.config.phases] == ["frozen"]

"""Magnitude pruning: masks, schedule, the Trainer hook, resume, tf.distribute, a plain model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
import kerastl.commands.cli
from kerastl.config.schema import Phase
from kerastl.recipes.plan import plan_phases
from kerastl.recipes.resolve import resolve_config
from kerastl.training.checkpoints import latest_readable_state
from kerastl.training.phase_data import PhaseData
from kerastl.training.pruning import (
    MagnitudePruning,
    magnitude_mask,
    polynomial_sparsity,
    prunable_weights,
    pruning_hooks,
)
from kerastl.training.trainer import Trainer

from .conftest import source_backbone
from .test_distributed import _child_env

EPOCHS = 3  # the pruned phase: sparsity 0.4375, 0.5, 0.5 at a target of 0.5 (ramp 2)


def test_mask_zeros_exactly_the_requested_share_of_smallest_magnitudes():
    weights = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype("float32")
    mask = magnitude_mask(weights, 0.3)
    assert mask.sum() == weights.size - round(0.3 * weights.size)
    assert np.abs(weights[mask == 0]).max() <= np.abs(weights[mask == 1]).min()


def test_depthwise_masks_prune_every_channel_filter_by_its_own_magnitudes():
    weights = np.random.default_rng(1).normal(size=(3, 3, 4, 1)).astype("float32")
    weights[..., 0, :] *= 1e-3  # a low-scale channel: a layer-wide threshold would kill it
    mask = magnitude_mask(weights, 0.5, per_kernel=True)
    kept_per_filter = mask.reshape(9, 4).sum(axis=0)
    assert kept_per_filter.tolist() == [4, 4, 4, 4]  # 5 of 9 taps pruned in each filter
    assert magnitude_mask(weights, 0.5).reshape(9, 4).sum(axis=0)[0] == 0


def test_masks_only_grow_once_weights_are_pruned():
    weights = np.random.default_rng(2).normal(size=1000)
    first = magnitude_mask(weights, 0.3)
    again = magnitude_mask(weights * first, 0.5)
    assert np.all(again[first == 0] == 0)


def test_polynomial_schedule_rises_monotonically_to_the_target_and_stays():
    values = [polynomial_sparsity(0.8, epoch, 9) for epoch in range(9)]
    assert values == sorted(values) and values[0] > 0
    assert values[4:] == [pytest.approx(0.8)] * 5  # ramp: ceil(0.5 * 9) = 5 epochs
    assert values[3] < 0.8
    assert polynomial_sparsity(0.5, 0, 1) == pytest.approx(0.5)  # one epoch: one shot


def test_prunable_weights_skip_batchnorm_biases_preprocessing_and_the_output():
    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None, mode="full",
                                backbone_kwargs={"alpha": 0.35}, dense_units=(8,))
    pruned = prunable_weights(model)
    names = {p.name for p in pruned}
    assert all(p.variable.name in ("kernel", "depthwise_kernel", "pointwise_kernel")
               for p in pruned)
    assert not any(n.startswith(("preprocess/", "predictions/")) for n in names)
    assert "head_dense_1/kernel" in names
    assert {p.per_kernel for p in pruned} == {True, False}  # depthwise and regular
    kerastl.set_regime(model, "frozen")
    assert {p.name for p in prunable_weights(model)} == {"head_dense_1/kernel"}


def test_prune_configuration_is_validated_with_the_received_value():
    with pytest.raises(kerastl.ConfigError, match="prune=1.5"):
        resolve_config(kerastl.RunConfig(prune=1.5))
    with pytest.raises(kerastl.ConfigError, match="trains the base"):
        resolve_config(kerastl.RunConfig(prune=0.5, mode="frozen"))
    config = resolve_config(kerastl.RunConfig(mode="full", epochs=6))
    phases = plan_phases(config, steps_per_epoch=4).phases
    assert [h.phase_index for h in pruning_hooks(0.5, phases)] == [1]
    config = kerastl.commands.flags.config_from_args(["--prune", "0.5"])
    assert config.prune == 0.5 and resolve_config(config).prune == 0.5


# ------------------------------------------------------------------ the Trainer hook
def _model():
    source = source_backbone()
    return kerastl.build_model(source["backbone"], 3, input_shape=32,
                               weights=source["weights"], dense_units=(16,),
                               backbone_kwargs=source["backbone_kwargs"])


def _data(model):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return PhaseData(model, lambda epoch: dataset, None, 4)


class _EpochSparsity(keras.callbacks.Callback):
    """Sparsity of the pruned kernels after the last step of each epoch."""

    def __init__(self, pruned):
        super().__init__()
        self.pruned, self.seen, self.kept = pruned, [], []
        self.hook = None  # set by _train

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append([float(np.mean(np.asarray(p.variable) == 0)) for p in self.pruned])
        self.kept.append(self.hook.keeps_epoch())


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt  # before this epoch's checkpoint is written


def _train(model, *, callbacks=(), checkpoint_dir=None, state=None, resume_from=None,
           depthwise=True):
    # depthwise=True: every kernel kind is masked (the default keeps depthwise ones).
    hook = MagnitudePruning(0.5, phase_index=0, log=lambda *_: None, depthwise=depthwise)
    for callback in callbacks:
        if isinstance(callback, _EpochSparsity):
            callback.hook = hook
    trainer = Trainer(model, tf.distribute.get_strategy(), optimizer="sgd", schedule="constant",
                      verbose=0, step_hooks=[hook], callbacks=callbacks,
                      checkpoint_dir=checkpoint_dir)
    trainer.run([Phase("full", EPOCHS, mode="full", lr=0.05)], lambda phase: _data(model),
                state, resume_from)
    return hook


@pytest.fixture(scope="module")
def pruned():
    model = _model()
    before = {p.name: np.asarray(p.variable).copy()
              for p in prunable_weights(model, trainable_only=False)}
    kerastl.set_regime(model, "full")
    others = {v.path: np.asarray(v).copy() for v in model.weights}
    watch = _EpochSparsity(prunable_weights(model))
    hook = _train(model, callbacks=[watch])
    return model, hook, watch, before, others


def test_masks_stay_applied_after_every_step_and_reach_the_target(pruned):
    model, hook, watch, before, _ = pruned
    schedule = [polynomial_sparsity(0.5, e, EPOCHS) for e in range(EPOCHS)]
    # Measured after the epoch's last optimizer step, before any final re-pruning.
    for epoch, sparsities in enumerate(watch.seen):
        assert min(sparsities) >= schedule[epoch] - 0.06, (epoch, min(sparsities))
    # Only epochs at the final sparsity may be restored as the best one.
    assert watch.kept == [s >= 0.5 for s in schedule] and not all(watch.kept)
    report = hook.report
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    # Pruned weights are +0.0: -0.0 has other bytes, which gzip pays for.
    for weight in prunable_weights(model):
        values = np.asarray(weight.variable)
        assert not np.signbit(values[values == 0]).any(), weight.name
    assert all(abs(row["sparsity"] - 0.5) < 0.06 for row in report["layers"].values())
    # Training happened: the kept weights moved.
    moved = [not np.allclose(np.asarray(p.variable)[np.asarray(p.variable) != 0],
                             before[p.name][np.asarray(p.variable) != 0])
             for p in prunable_weights(model)]
    assert sum(moved) > len(moved) // 2


def test_by_default_depthwise_kernels_are_kept_and_the_others_make_up_for_them():
    model = _model()
    kerastl.set_regime(model, "full")
    depthwise_before = {p.name: np.asarray(p.variable).copy()
                        for p in prunable_weights(model) if p.per_kernel}
    hook = _train(model, depthwise=False)
    report = hook.report
    assert report["depthwise"] == "kept" and report["sparsity"] == pytest.approx(0.5, abs=0.01)
    rows = report["layers"].values()
    assert report["pruned_kernels"] == sum(not row["per_kernel"] for row in rows)
    assert all(row["sparsity"] > 0.5 for row in rows if not row["per_kernel"])
    for weight in prunable_weights(model):
        if weight.per_kernel:  # trained, never masked
            values = np.asarray(weight.variable)
            assert np.count_nonzero(values == 0) == np.count_nonzero(
                depthwise_before[weight.name] == 0), weight.name


def test_batchnorm_and_biases_are_never_pruned(pruned):
    model, before = pruned[0], pruned[4]
    checked = 0
    for variable in model.weights:
        if variable.name in ("bias", "gamma", "beta", "moving_variance"):
            was_nonzero = before[variable.path] != 0
            assert np.all(np.asarray(variable)[was_nonzero] != 0), variable.path
            checked += int(was_nonzero.sum())
    assert checked > 1000  # pretrained squeeze-excite biases and BatchNorm parameters


def test_pruned_model_is_a_plain_keras_model_that_keeps_its_zeros(pruned, tmp_path):
    model = pruned[0]
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert all(type(layer).__module__.startswith("keras.")
               for layer in loaded._flatten_layers(include_self=False))
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resumed_pruning_recomputes_masks_from_the_restored_zeros(tmp_path):
    model = _model()
    kerastl.set_regime(model, "full")
    keras.utils.set_random_seed(0)
    with pytest.raises(KeyboardInterrupt):
        _train(model, callbacks=[_StopAfter(2)], checkpoint_dir=tmp_path)
    checkpoint, state = latest_readable_state(tmp_path)
    assert state.phase_epoch == 1  # epoch 2 was interrupted before its checkpoint
    restored = _model()
    restored.load_weights(checkpoint / "model.weights.h5")
    kerastl.set_regime(restored, "full")
    again = _model()
    kerastl.set_regime(again, "full")
    hook = _train(again, checkpoint_dir=tmp_path, state=state, resume_from=checkpoint)
    assert hook.report["sparsity"] == pytest.approx(0.5, abs=0.01)
    for p_after, p_restored in zip(prunable_weights(again), prunable_weights(restored),
                                   strict=True):
        zero_before = np.asarray(p_restored.variable) == 0
        assert zero_before.mean() > 0.4  # the checkpoint holds the first epoch's zeros
        assert np.all(np.asarray(p_after.variable)[zero_before] == 0), p_after.name


# ------------------------------------------------------------------ tf.distribute
MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys

    from kerastl.training.strategies import make_strategy, split_logical_cpus

    devices = split_logical_cpus(2)

    import keras
    import numpy as np
    import tensorflow as tf

    import kerastl
    from kerastl.training.pruning import MagnitudePruning, prunable_weights
    from kerastl.training.trainer import Trainer
    from kerastl.training.phase_data import PhaseData

    source = json.loads(sys.argv[1])
    keras.utils.set_random_seed(0)
    strategy = make_strategy("mirrored", devices=devices)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    with strategy.scope():
        model = kerastl.build_model(source["backbone"], 3, input_shape=32,
                                    weights=source["weights"], dense_units=(),
                                    backbone_kwargs=source["backbone_kwargs"])
    kerastl.set_regime(model, "full")
    pruned = prunable_weights(model)
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            # Every replica's copy, after the epoch's last step.
            copies = [[np.asarray(c) for c in p.variable.value.values] for p in pruned]
            seen.append({"replicas": len(copies[0]),
                         "sparsity": [float(np.mean(c[0] == 0)) for c in copies],
                         "equal": all(np.array_equal(c[0], other) for c in copies
                                      for other in c[1:])})

    hook = MagnitudePruning(0.5, phase_index=0, log=lambda *_: None, depthwise=True)
    data = PhaseData(model, lambda e: tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
                     None, 4)
    Trainer(model, strategy, optimizer="sgd", schedule="constant", verbose=0,
            step_hooks=[hook], callbacks=[Watch()]).run(
        [kerastl.Phase("full", 2, mode="full", lr=0.05)], lambda phase: data)
    print(json.dumps({"seen": seen, "sparsity": hook.report["sparsity"]}))
    """
)


@pytest.mark.slow
def test_masks_hold_on_every_replica_under_mirrored_strategy(tmp_path):
    script = tmp_path / "mirrored_prune.py"
    script.write_text(MIRRORED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), json.dumps(source_backbone())],
                          env=_child_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    schedule = [polynomial_sparsity(0.5, e, 2) for e in range(2)]
    for epoch, seen in enumerate(result["seen"]):
        assert seen["replicas"] == 2 and seen["equal"]
        assert min(seen["sparsity"]) >= schedule[epoch] - 0.06
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01)

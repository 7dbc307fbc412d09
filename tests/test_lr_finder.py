"""The learning-rate range test: suggestions, no side effects, --lr auto."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kerastl
from kerastl.data.samples import data_samples_dir
from kerastl.training.lr_range_test import minimum_over_ten, steepest, valley

SAMPLES = data_samples_dir() / "fashion"
TINY = dict(data=str(SAMPLES / "train"), val_data=str(SAMPLES / "val"),
            backbone="MobileNetV2", backbone_kwargs={"alpha": 0.35}, weights=None,
            image_size=32, batch_size=64, augment=[], verbose=0, mode="frozen", epochs=2)


def test_suggestions_on_a_textbook_curve():
    lrs = list(np.geomspace(1e-6, 10, 71))
    # Flat, then falling between 1e-4 and 1e-1, then diverging.
    losses = [2.0 if lr < 1e-4 else max(0.5, 2.0 - 0.5 * np.log10(lr / 1e-4))
              for lr in lrs]
    losses = [loss + (10 * (lr - 0.1) if lr > 0.1 else 0.0)
              for loss, lr in zip(losses, lrs, strict=True)]
    for rule in (valley, minimum_over_ten, steepest):
        assert 1e-5 <= rule(lrs, losses) <= 1e-1, rule.__name__


def test_lr_find_leaves_the_model_unchanged_and_writes_its_plot(tmp_path):
    result = kerastl.lr_find(kerastl.RunConfig(**TINY, output=str(tmp_path / "f")), steps=30)
    assert 1e-7 <= result.suggestion <= 10 and len(result.lrs) == len(result.losses) >= 5
    assert set(result.suggestions) == {"valley", "minimum/10", "steepest"}
    saved = json.loads((tmp_path / "f" / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion
    assert (tmp_path / "f" / "lr_find.png").stat().st_size > 0


def test_range_test_restores_weights_and_optimizer_state():
    import tensorflow as tf

    from kerastl.training.lr_range_test import range_test
    from kerastl.training.phase_data import PhaseData
    from kerastl.training.trainer import Trainer

    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                dense_units=(), backbone_kwargs={"alpha": 0.35})
    x = np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = np.arange(32) % 3
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    data = PhaseData(model, lambda epoch: dataset, None, 4)
    trainer = Trainer(model, tf.distribute.get_strategy(), verbose=0)
    phase = kerastl.Phase("head", 1, lr=1e-3)
    trainer.prepare_phase(phase, data, constant_lr=True)
    before = model.get_weights()
    slots = [np.asarray(v) for v in trainer.optimizer.variables]
    range_test(trainer, data, steps=20)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # set back exactly: the same arrays
    for a, v in zip(slots, trainer.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a, np.asarray(v))


def test_lr_auto_trains_each_phase_at_its_found_rate(tmp_path):
    result = kerastl.fit(kerastl.RunConfig(**{**TINY, "epochs": 3}, lr="auto",
                                           schedule="constant", output=str(tmp_path / "a")))
    facts = json.loads((result.output_dir / "run.json").read_text())
    found = facts["found_learning_rates"]["0"]
    assert 1e-7 <= found <= 10
    assert all(row["lr"] == pytest.approx(found, rel=1e-5) for row in result.history)

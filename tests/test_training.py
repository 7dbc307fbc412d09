"""The Trainer: fresh flags per phase, schedules, losses."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.config import Phase
from kerastl.training import PhaseData, Trainer, make_schedule

from .conftest import source_model


def _tiny_data(model):
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    return PhaseData(model, lambda epoch: dataset, dataset, 2)


def test_changing_trainable_flags_after_a_phase_compiled_is_refused():
    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                dense_units=(), backbone_kwargs={"alpha": 0.35})
    trainer = Trainer(model, tf.distribute.get_strategy(), verbose=0)
    trainer.run([Phase("head", 1, lr=1e-3)], lambda phase: _tiny_data(model))
    trainer.assert_fresh()  # unchanged flags: fine
    kerastl.set_regime(model, "finetune", unfreeze_blocks=1, recompile=False)
    with pytest.raises(kerastl.StaleTrainableError, match="new Phase"):
        trainer.assert_fresh()


def test_each_phase_trains_exactly_its_regime():
    model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                dense_units=(), backbone_kwargs={"alpha": 0.35})
    conv = model.get_layer("backbone").get_layer("Conv_1")
    first = model.get_layer("backbone").get_layer("Conv1")
    before_top, before_first = np.array(conv.kernel), np.array(first.kernel)
    trainer = Trainer(model, tf.distribute.get_strategy(), optimizer="sgd", verbose=0)
    state = trainer.run(
        [Phase("head", 1, lr=0.1), Phase("top", 1, mode="finetune", unfreeze_blocks=1, lr=0.1)],
        lambda phase: _tiny_data(model),
    )
    assert [row["phase"] for row in state.history] == ["head", "top"]
    assert not np.array_equal(before_top, np.array(conv.kernel))
    assert np.array_equal(before_first, np.array(first.kernel))


@pytest.mark.parametrize("kind", ["constant", "cosine", "onecycle"])
def test_schedules_peak_at_the_requested_rate_and_decay(kind):
    schedule = make_schedule(kind, 1e-2, total_steps=100, warmup_steps=10)
    rates = [float(schedule(step)) if callable(schedule) else schedule for step in range(101)]
    assert max(rates) == pytest.approx(1e-2, rel=1e-3)
    if kind != "constant":
        assert rates[-1] < 1e-4 and rates[0] < 1e-2


def test_validation_of_unknown_cardinality_is_read_to_the_end():
    # After filter() a dataset's cardinality is unknown (-2): it must still be evaluated.
    model = source_model(3)
    data = _tiny_data(model)
    filtered = data.val.filter(lambda x, y: True)
    assert int(filtered.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    trainer = Trainer(model, tf.distribute.get_strategy(), verbose=0)
    state = trainer.run([Phase("head", 1, lr=1e-3)],
                        lambda phase: PhaseData(model, data.train, filtered, 2))
    expected = trainer.evaluate(data.val)
    assert expected["val_loss"] > 0.1
    assert state.history[-1]["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert state.history[-1]["val_accuracy"] == pytest.approx(expected["val_accuracy"])
    with pytest.raises(kerastl.ConfigError, match="infinite"):
        trainer.evaluate(data.val.repeat())

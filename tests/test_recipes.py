"""Recipes: budgets counted in optimizer steps, and what each mode means as phases."""

from __future__ import annotations

import pytest

import kerastl
from kerastl.recipes.plan import MAX_STEPS, MIN_EPOCHS, TARGET_STEPS, epoch_budget, plan_phases
from kerastl.recipes.resolve import resolve_config


@pytest.mark.parametrize("steps_per_epoch", [1, 2, 16, 157, 1563, 20_000])
def test_auto_budget_gives_small_data_enough_steps_and_large_data_a_cap(steps_per_epoch):
    epochs, reason = epoch_budget("auto", steps_per_epoch)
    steps = epochs * steps_per_epoch
    assert epochs >= 1 and str(epochs) in reason
    if steps_per_epoch * MIN_EPOCHS <= MAX_STEPS:
        assert steps >= TARGET_STEPS and epochs >= MIN_EPOCHS
    else:  # the cap wins: at most MAX_STEPS steps, but always one pass
        assert steps <= max(MAX_STEPS, steps_per_epoch)


def test_an_explicit_epoch_count_is_honoured():
    assert epoch_budget(3, 2)[0] == 3
    config = resolve_config(kerastl.RunConfig(mode="frozen", epochs=3))
    assert [p.epochs for p in plan_phases(config, steps_per_epoch=2).phases] == [3]


def test_auto_mode_is_a_probe_then_full_with_the_whole_budget():
    config = resolve_config(kerastl.RunConfig(mode="auto", epochs="auto"))
    plan = plan_phases(config, steps_per_epoch=2)
    assert [(p.name, p.fit, p.mode) for p in plan.phases] == [
        ("probe", "probe", "frozen"), ("full", "train", "full")]
    assert plan.phases[1].epochs * 2 >= TARGET_STEPS
    assert any("optimizer steps" in reason for reason in plan.reasons)


def test_probe_warmup_for_finetune_keeps_the_unfreeze_choice():
    config = resolve_config(kerastl.RunConfig(mode="finetune", head_warmup="probe",
                                              unfreeze_blocks=3, epochs=4))
    probe, tune = plan_phases(config, steps_per_epoch=5).phases
    assert probe.fit == "probe" and tune.unfreeze_blocks == 3 and tune.epochs == 4


def test_lr_auto_marks_every_trained_phase_for_a_range_test():
    config = resolve_config(kerastl.RunConfig(mode="full", lr="auto", epochs=6))
    assert [p.lr for p in plan_phases(config, steps_per_epoch=5).phases] == ["auto", "auto"]


def test_a_probe_phase_must_be_frozen():
    with pytest.raises(kerastl.ConfigError, match="mode='frozen'"):
        kerastl.Phase("probe", 1, mode="full", fit="probe")


@pytest.mark.parametrize("mode", ["auto", "finetune", "scratch"])
def test_pruning_adds_a_prune_phase_that_starts_from_the_trained_model(mode):
    from kerastl.training.pruning import pruning_hooks

    config = resolve_config(kerastl.RunConfig(mode=mode, epochs=6, prune=0.5))
    plan = plan_phases(config, steps_per_epoch=5)
    *_, trained, prune = plan.phases
    assert prune.name == "prune" and trained.name != "prune"
    assert (prune.mode, prune.epochs, prune.lr, prune.unfreeze_blocks) == (
        trained.mode, trained.epochs, trained.lr, trained.unfreeze_blocks)
    assert [h.phase_index for h in pruning_hooks(0.5, plan.phases)] == [len(plan.phases) - 1]
    assert any("--prune 0.5" in reason for reason in plan.reasons)
    unpruned = plan_phases(resolve_config(kerastl.RunConfig(mode=mode, epochs=6)), 5).phases
    assert plan.phases[:-1] == unpruned  # the same training, then the prune phase

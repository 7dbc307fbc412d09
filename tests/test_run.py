"""``kerastl.fit`` on small in-memory splits: which path each phase takes, what it reports."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import kerastl
from kerastl.recipes.fit import fit

from .conftest import source_backbone
from .numerics import assert_same_model


def _digits_splits(n_train: int = 48, n_val: int = 24, test: bool = True,
                   classes: int = 3) -> kerastl.DataSplits:
    """Real digits as 8x8 uint8 images (resized to the model's input by the data layer)."""
    digits = load_digits()
    keep = digits.target < classes
    images, labels = (digits.images[keep] * 16).astype("uint8"), digits.target[keep]
    names = [str(i) for i in range(classes)]
    end_val = n_train + n_val
    return kerastl.DataSplits(
        train=kerastl.from_arrays(images[:n_train], labels[:n_train], class_names=names),
        val=kerastl.from_arrays(images[n_train:end_val], labels[n_train:end_val],
                                class_names=names),
        test=(kerastl.from_arrays(images[end_val:end_val + 24], labels[end_val:end_val + 24],
                                  class_names=names) if test else None),
        class_names=names,
    )


def _config(tmp_path, name: str, **values) -> kerastl.RunConfig:
    # float32, not "auto" (mixed_bfloat16 on a CPU with avx512_bf16): runs compared
    # here differ by float32 round-off only, on every CPU.
    # Checkpoints every epoch: the crash tests resume from the epoch before the crash.
    return kerastl.RunConfig(**{"image_size": 32, "batch_size": 16, "augment": [],
                                "verbose": 0, "seed": 1, "output": str(tmp_path / name),
                                "precision": "float32", "checkpoint_interval": 0, **values})


def _source(**values) -> dict:
    source = source_backbone()
    return {"backbone": source["backbone"], "backbone_kwargs": source["backbone_kwargs"],
            "weights": source["weights"], **values}


# ------------------------------------------------------------------ feature cache
def test_bn_policy_train_with_the_feature_cache_trains_both_phases(tmp_path):
    # The head phase trains on cached features (its extractor calls the base with
    # training=False); the fine-tuning phase must still let BatchNorm train.
    result = fit(_config(tmp_path, "bn", **_source(), mode="finetune", epochs=2,
                         head_epochs=1, unfreeze_blocks=1, bn_policy="train"),
                 splits=_digits_splits())
    assert [row["phase"] for row in result.history] == ["head", "finetune"]
    assert any("cached base features" in note for note in result.notes)
    # run.json says where the training time went, in parts that add up to it.
    facts = json.loads((result.output_dir / "run.json").read_text())
    parts = facts["train_breakdown"]
    assert set(parts) == {"phase_data", "first_epochs", "epochs", "other"}
    assert parts["phase_data"] > 0 and parts["first_epochs"] > 0  # extraction, tracing
    assert min(parts.values()) >= 0  # "other" is the rest: the named parts fit inside train


def test_dropout_inside_the_base_falls_back_to_image_batches_and_says_why(tmp_path):
    # EfficientNet's drop-connect runs during training when BatchNorm trains, so the
    # features of a frozen phase are not a fixed function of the image.
    result = fit(_config(tmp_path, "eff", backbone="EfficientNetB0", weights=None,
                         mode="frozen", epochs=1, bn_policy="train"),
                 splits=_digits_splits(n_train=16, n_val=8))
    assert [row["phase"] for row in result.history] == ["frozen"]
    assert not any("cached base features" in note for note in result.notes)
    why = [note for note in result.notes if note.startswith("phase 'frozen'")]
    assert why and "Dropout" in why[0], result.notes
    saved = json.loads((result.output_dir / "run.json").read_text())["notes"]
    assert saved == result.notes


# ------------------------------------------------------------------ resume
class _CrashAfter(keras.callbacks.Callback):
    """Crash at the end of epoch ``epoch`` (1-based), before its checkpoint is written."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_resume_with_precision_float32_after_a_mixed_float16_run(tmp_path):
    # kerastl's own advice after a NaN under mixed_float16: --resume --precision float32.
    splits = _digits_splits(n_train=32, n_val=16)
    config = _config(tmp_path, "mixed", **_source(), mode="frozen", epochs=2,
                     precision="mixed_float16")
    with pytest.raises(KeyboardInterrupt):
        fit(config, splits=splits, callbacks=[_CrashAfter(2)])  # epoch 1 saved
    keras.mixed_precision.set_global_policy("float32")
    with pytest.warns(UserWarning, match="loss-scale state is not restored"):
        resumed = fit(kerastl.RunConfig(output=config.output, resume=True, precision="float32",
                                        verbose=0), splits=splits)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.config.precision == "float32"
    assert resumed.model.get_layer("predictions").kernel.dtype == "float32"


# ------------------------------------------------------------------ what is reported
@pytest.fixture(scope="module")
def cached_and_uncached(tmp_path_factory):
    """The same frozen run twice (seed, data, --augment none): cached features, images.

    Label smoothing on and no test split, so the final evaluation is on the
    validation split with the definition of val_loss.
    """
    tmp_path = tmp_path_factory.mktemp("cache")
    splits = _digits_splits(n_train=40, n_val=16, test=False)
    common = dict(**_source(), mode="frozen", epochs=2, dropout=0.2, label_smoothing=0.2)
    cached = fit(_config(tmp_path, "cached", **common), splits=splits)
    uncached = fit(_config(tmp_path, "images", **common, feature_cache="off"), splits=splits)
    return splits, cached, uncached


def test_a_cached_run_equals_an_uncached_run(cached_and_uncached):
    splits, cached, uncached = cached_and_uncached
    assert any("cached base features" in note for note in cached.notes)
    assert not any("cached base features" in note for note in uncached.notes)
    for a, b in zip(cached.history, uncached.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    images = next(iter(splits.val.batches(32, 8)))[0].numpy()
    # Dropout is active in training=True calls: both models draw the same masks only if
    # their seed states advanced alike.
    # The same function along two paths (cached features vs images through the base):
    # float32 round-off of oneDNN kernels only, hence rtol 1e-5 plus an absolute term.
    assert_same_model(uncached.model, cached.model, images, rtol=1e-5, atol=1e-6)


def test_final_loss_has_the_definition_of_val_loss(cached_and_uncached):
    from kerastl.models.forward import predict

    splits, result, _ = cached_and_uncached
    assert result.metrics["evaluated_on"] == "validation"
    assert result.metrics["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)
    probs, labels = predict(result.model, splits.val.batches(32, 16))
    plain = float(np.mean(-np.log(probs[np.arange(len(labels)), labels])))
    assert result.metrics["cross_entropy"] == pytest.approx(plain, rel=1e-5)
    assert abs(result.metrics["cross_entropy"] - result.metrics["loss"]) > 1e-3
    definitions = result.metrics["definitions"]
    assert "label_smoothing=0.2" in definitions["loss"] and "val_loss" in definitions["loss"]
    saved = json.loads((result.output_dir / "metrics.json").read_text())
    assert saved["loss"] == result.metrics["loss"]


# ------------------------------------------------------------------ resume after recovery
def test_resume_lr_applies_even_at_the_default_value_with_a_constant_schedule(tmp_path):
    # The first run used lr 0.1; the recovery is --lr 0.01, which is also the default
    # value: it must not be taken for "not given", nor undone by the restored optimizer.
    splits = _digits_splits(n_train=32, n_val=16)
    config = _config(tmp_path, "lr", **_source(), mode="frozen", epochs=3, lr=0.1,
                     schedule="constant")
    with pytest.raises(KeyboardInterrupt):
        fit(config, splits=splits, callbacks=[_CrashAfter(2)])  # epoch 1 saved
    resumed = fit(kerastl.RunConfig(output=config.output, resume=True, lr=0.01, verbose=0),
                  splits=splits)
    assert [row["lr"] for row in resumed.history] == pytest.approx([0.1, 0.01, 0.01])


def _learning_gets_worse_on_val(n: int = 48):
    """Validation = the training images with every label shifted: the better the head
    learns, the worse it validates, so a phase's first epoch is its best."""
    splits = _digits_splits(n_train=n, n_val=0, test=False)
    train = splits.train
    shifted = kerastl.from_arrays(train.images, (train.labels + 1) % 3,
                                  class_names=splits.class_names)
    return kerastl.DataSplits(train=train, val=shifted, test=None,
                              class_names=splits.class_names)


def test_a_phase_ends_on_its_best_weights_and_its_checkpoint_says_it_is_finished(tmp_path):
    from kerastl.training.checkpoints import latest_readable_state

    splits = _learning_gets_worse_on_val()
    phases = [kerastl.Phase("first", 3, lr=0.05), kerastl.Phase("second", 2, lr=0.05)]
    common = dict(**_source(), phases=phases, optimizer="sgd", schedule="constant")
    straight = fit(_config(tmp_path, "straight", **common), splits=splits)
    crashed = _config(tmp_path, "crashed", **common)
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, splits=splits, callbacks=[_CrashAfter(4)])  # first epoch of "second"
    checkpoint, state = latest_readable_state(tmp_path / "crashed" / "checkpoints")
    assert (state.phase_index, state.phase_epoch, state.epoch) == (1, 0, 3)
    assert state.phase_best is None  # the next phase, resumed, starts its own best afresh
    # The phase ended on epoch 1's weights: the checkpoint's own weights are the best
    # ones, so it carries no second copy of them.
    assert not (checkpoint / "best.npz").exists()
    first = [row for row in straight.history if row["phase"] == "first"]
    assert state.best["epoch"] == 1 and first[0]["val_accuracy"] > first[-1]["val_accuracy"]
    resumed = fit(kerastl.RunConfig(output=crashed.output, resume=True, verbose=0),
                  splits=splits)
    assert [row["phase"] for row in resumed.history] == ["first"] * 3 + ["second"] * 2
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_without_held_out_data_the_run_keeps_its_last_epoch_and_says_so(tmp_path):
    splits = _digits_splits(n_train=24, n_val=0, test=False)
    splits.val = None
    result = fit(_config(tmp_path, "noval", **_source(), mode="frozen", epochs=2),
                 splits=splits)
    assert result.metrics["evaluated_on"].startswith("training")
    assert any("last epoch" in note for note in result.notes)
    assert "val_accuracy" not in result.history[-1]


# ------------------------------------------------------------------ L2-SP
class _BaseAtStart(keras.callbacks.Callback):
    """The base's weights when training begins (the pretrained ones)."""

    weights = None

    def on_train_begin(self, logs=None):
        from kerastl.models.freezing import find_backbone

        if self.weights is None:
            self.weights = [w.numpy() for w in find_backbone(self.model)[0].weights]


@pytest.mark.parametrize("anchor_decay", [0.0, 100.0])
def test_anchor_decay_holds_a_fine_tuned_base_at_its_pretrained_weights(tmp_path, anchor_decay):
    # lr * F = 1: each step returns the unfrozen blocks to where the phase started;
    # the head phase before it (base frozen) trains as usual.
    from kerastl.models.freezing import find_backbone

    start = _BaseAtStart()
    result = fit(_config(tmp_path, f"a{anchor_decay:g}", **_source(), mode="finetune",
                         epochs=2, head_epochs=1, unfreeze_blocks=1, optimizer="sgd",
                         schedule="constant", lr=0.1, finetune_lr_factor=0.1,
                         anchor_decay=anchor_decay),
                 splits=_digits_splits(), callbacks=[start])
    end = [w.numpy() for w in find_backbone(result.model)[0].weights]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(start.weights, end, strict=True))
    if anchor_decay:
        assert moved < 1e-5
    else:
        assert moved > 1e-4  # the control: without it the top block does move
    assert result.config.anchor_decay == anchor_decay


def test_a_run_resumed_at_a_phase_boundary_anchors_to_the_weights_the_phase_started_from(
        tmp_path):
    # Without validation nothing reloads the checkpoint's weights early: the optimizer
    # of the resumed phase must be built after they are restored, or L2-SP would pull
    # the head toward the freshly built process's random one.
    splits = _digits_splits(n_train=24, n_val=0, test=False)
    splits.val = None
    phases = [kerastl.Phase("head", 2, mode="frozen", lr=0.05),
              kerastl.Phase("tune", 2, mode="full", lr=0.05)]
    common = dict(**_source(), phases=phases, optimizer="sgd", schedule="constant",
                  anchor_decay=10.0)
    straight = fit(_config(tmp_path, "straight", **common), splits=splits)
    crashed = _config(tmp_path, "crashed", **common)
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, splits=splits, callbacks=[_CrashAfter(3)])  # first epoch of "tune"
    resumed = fit(kerastl.RunConfig(output=crashed.output, resume=True, verbose=0),
                  splits=splits)
    assert [row["phase"] for row in resumed.history] == ["head"] * 2 + ["tune"] * 2
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

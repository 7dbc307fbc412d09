"""End to end on the shipped data_samples: outputs, reload, evaluate, predict, resume."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import keras
import numpy as np
import pytest

import kerastl
from kerastl.commands import cli
from kerastl.commands.evaluate import evaluate_main
from kerastl.commands.predict import predict_main
from kerastl.data.samples import data_samples_dir, source_backbone
from kerastl.outputs.history import read_history_csv
from kerastl.recipes.fit import OUTPUT_FILES, fit

from .numerics import assert_same_model

SAMPLES = data_samples_dir() / "fashion"
# From the shipped source backbone: a random base with BatchNorm in inference mode has
# ~1e-12 features, so reloaded or resumed weights would "match" whatever happened.
SOURCE = source_backbone()
TINY = dict(
    data=str(SAMPLES / "train"), val_data=str(SAMPLES / "val"), test_data=str(SAMPLES / "test"),
    backbone=SOURCE["backbone"], backbone_kwargs=SOURCE["backbone_kwargs"],
    weights=SOURCE["weights"], image_size=32,
    batch_size=64, augment=[], verbose=0, seed=3, deterministic=True,
    dropout=0.0,  # a reloaded model has a fresh dropout seed: training=True calls compare
    # "auto" is mixed_bfloat16 on a CPU with avx512_bf16: comparisons of two paths (eager
    # and compiled calls) would then measure bfloat16 rounding (~2**-8), not kerastl.
    precision="float32",
)


def _assert_same_model(expected: keras.Model, actual: keras.Model, images) -> None:
    # Equal up to float32 round-off of oneDNN kernels (seen: 1e-10 absolute), hence rtol
    # 1e-5 with an absolute term for values near zero.
    assert_same_model(expected, actual, images, rtol=1e-5, atol=1e-6, weights_atol=1e-8)


def _test_images(n: int = 8):
    return next(iter(kerastl.data.folders.from_folder(SAMPLES / "test").batches(32, n)))[0]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    config = kerastl.RunConfig(**TINY, epochs=2, head_epochs=1, mode="finetune",
                               unfreeze_blocks=2, output=str(out))
    return fit(config)


def test_every_output_is_written_and_reloads(finetune_run):
    out = finetune_run.output_dir
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").iterdir())
    model = kerastl.load_model(out / "model.keras")
    _assert_same_model(finetune_run.model, model, _test_images())
    labels = json.loads((out / "labels.json").read_text())
    assert labels["class_names"] == sorted(p.name for p in (SAMPLES / "train").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(labels["class_names"])
    config = kerastl.config.schema.load_yaml(out / "config.yaml")
    assert config["mode"] == "finetune" and config["image_size"] == 32


def test_phased_run_records_both_phases_in_history(finetune_run):
    rows = read_history_csv(finetune_run.output_dir / "history.csv")
    assert [row["phase"] for row in rows] == ["head", "finetune"]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["val_accuracy"] is not None for row in rows)


def test_backbone_weights_serve_as_weights_for_another_run(finetune_run):
    path = finetune_run.output_dir / "backbone.weights.h5"
    model = kerastl.build_model(TINY["backbone"], 2, input_shape=48, weights=path,
                                backbone_kwargs=TINY["backbone_kwargs"])
    source = kerastl.build_model(TINY["backbone"], 2, input_shape=48, weights=TINY["weights"],
                                 backbone_kwargs=TINY["backbone_kwargs"])
    trained = finetune_run.model.get_layer("backbone").get_weights()
    loaded = model.get_layer("backbone").get_weights()
    assert len(loaded) == len(trained) > 100
    for a, b in zip(loaded, trained, strict=True):
        np.testing.assert_array_equal(a, b)
    # Fine-tuning moved the top blocks away from the source weights it started from.
    moved = [not np.array_equal(a, b) for a, b in
             zip(trained, source.get_layer("backbone").get_weights(), strict=True)]
    assert 8 <= sum(moved) < len(moved)


def test_evaluate_and_predict_round_trip(finetune_run, tmp_path):
    model_path = str(finetune_run.output_dir / "model.keras")
    assert evaluate_main([model_path, str(SAMPLES / "test"), "--output", str(tmp_path)]) == 0
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(finetune_run.metrics["accuracy"])
    # The run's loss definition (label smoothing) travels in labels.json.
    assert evaluated["loss"] == pytest.approx(finetune_run.metrics["loss"], rel=1e-5)
    assert evaluated["definitions"] == finetune_run.metrics["definitions"]
    csv_path = tmp_path / "pred.csv"
    sandal = SAMPLES / "test" / "sandal"
    assert predict_main([model_path, str(sandal), "--output", str(csv_path)]) == 0
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == len(list(sandal.iterdir()))
    probs = np.array([[float(r[f"p_{n}"]) for n in finetune_run.class_names] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert {r["class"] for r in rows} <= set(finetune_run.class_names)


def test_existing_run_is_never_overwritten(finetune_run):
    with pytest.raises(kerastl.ConfigError, match="already holds a run"):
        fit(kerastl.RunConfig(**TINY, epochs=1, mode="frozen",
                              output=str(finetune_run.output_dir)))


class _CrashAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.slow
def test_resume_continues_with_same_phase_and_ends_with_same_weights(tmp_path):
    # Head dropout on: the resumed run must also draw the masks the straight one drew.
    common = dict(**{**TINY, "dropout": 0.2}, epochs=3, head_epochs=1, mode="finetune",
                  unfreeze_blocks=1, feature_cache="off")
    straight = fit(kerastl.RunConfig(**common, output=str(tmp_path / "straight")))
    crashed = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        fit(kerastl.RunConfig(**common, output=crashed), callbacks=[_CrashAfter(3)])
    resumed = fit(kerastl.RunConfig(output=crashed, resume=True, verbose=0))
    assert [r["phase"] for r in resumed.history] == ["head", "finetune", "finetune"]
    assert len(resumed.history) == 3
    assert any(not np.array_equal(a, b) for a, b in  # the base itself fine-tuned
               zip(straight.model.get_layer("backbone").get_weights(),
                   kerastl.build_model(TINY["backbone"], 5, input_shape=32,
                                       weights=TINY["weights"],
                                       backbone_kwargs=TINY["backbone_kwargs"])
                   .get_layer("backbone").get_weights(), strict=True))
    _assert_same_model(straight.model, resumed.model, _test_images())


def test_help_is_grouped_and_bad_values_are_refused_in_one_line(capsys):
    # In this process: `python -m kerastl.train` itself runs in test_reliability and
    # test_distributed, and each extra interpreter costs a TensorFlow import.
    from kerastl.commands.train import train_main

    with pytest.raises(SystemExit) as shown:
        train_main(["--help"])
    assert shown.value.code == 0
    help_text = capsys.readouterr().out
    for group in ("data:", "model:", "regime:", "optimisation:", "runtime:", "output:"):
        assert group in help_text
    with pytest.raises(SystemExit) as refused:
        train_main(["--epochs", "0"])
    assert refused.value.code == 2
    assert "--epochs: expected a positive integer, got '0'" in capsys.readouterr().err


def test_config_file_values_are_defaults_that_flags_override(tmp_path):
    from kerastl.commands.flags import config_from_args

    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nlr: 0.01\nbackbone: ResNet50\n")
    config = config_from_args(["--config", str(path), "--epochs", "2"])
    assert (config.epochs, config.lr, config.backbone) == (2, 0.01, "ResNet50")


def test_unknown_config_key_is_refused(tmp_path):
    from kerastl.commands.flags import config_from_args

    path = tmp_path / "run.yaml"
    path.write_text("epocs: 7\n")
    with pytest.raises(kerastl.ConfigError, match="epocs"):
        config_from_args(["--config", str(path)])


def test_kerastl_console_entry_lists_subcommands():
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert cli.main(["--help"]) == 0
    assert all(c in buffer.getvalue() for c in ("train", "evaluate", "predict", "doctor"))


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(kerastl.DataError, match="nowhere"):
        fit(kerastl.RunConfig(**{**TINY, "data": str(tmp_path / "nowhere")}, epochs=1,
                              mode="frozen", output=str(tmp_path / "o")))
    assert not Path(tmp_path / "o" / "model.keras").exists()


def test_frozen_run_trains_the_head_on_cached_features_and_saves_the_full_model(tmp_path):
    result = fit(kerastl.RunConfig(**TINY, epochs=2, mode="frozen", output=str(tmp_path / "o")))
    assert any("cached base features" in note for note in result.notes)
    model = kerastl.load_model(result.output_dir / "model.keras")
    assert model.input_shape == (None, 32, 32, 3)  # end to end: raw images in
    images = next(iter(kerastl.data.folders.from_folder(SAMPLES / "val").batches(32, 16)))[0]
    features = model.get_layer("backbone")(model.get_layer("preprocess")(images))
    head = kerastl.head_model(model)
    np.testing.assert_allclose(model.predict(images, verbose=0),
                               np.asarray(head(features)), atol=1e-5)
    # Augmentation given explicitly: K augmented passes are computed once and cached.
    with_augmentation = fit(kerastl.RunConfig(**{**TINY, "augment": ["flip"]}, epochs=1,
                                              augment_passes=2, mode="frozen",
                                              output=str(tmp_path / "a")))
    assert any("2 augmented passes of cached base features" in n
               for n in with_augmentation.notes)


def test_output_paths_cannot_escape_the_output_directory(tmp_path):
    from kerastl.core.files import inside_output

    out = tmp_path / "run"
    out.mkdir()
    assert inside_output(out, "checkpoints") == (out / "checkpoints").resolve()
    with pytest.raises(kerastl.ConfigError, match="outside the output directory"):
        inside_output(out, "../elsewhere")
    (tmp_path / "outside").mkdir()
    (out / "checkpoints").symlink_to(tmp_path / "outside")
    with pytest.raises(kerastl.ConfigError, match="symlink"):
        inside_output(out, "checkpoints")


def test_sklearn_head_from_the_cli_saves_a_classifier_that_predicts_raw_images(tmp_path):
    from kerastl.commands.train import train_main

    out = tmp_path / "sk"
    argv = ["--data", TINY["data"], "--val-data", TINY["val_data"], "--test-data",
            TINY["test_data"], "--backbone", TINY["backbone"], "--backbone-args",
            ",".join(f"{k}={v}" for k, v in TINY["backbone_kwargs"].items()),
            "--weights", TINY["weights"], "--image-size", "32", "--head", "sklearn-logreg",
            "--output", str(out), "--verbose", "0"]
    assert train_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    classifier = kerastl.SklearnClassifier.load(out / "sklearn_classifier")
    test = kerastl.data.folders.from_folder(SAMPLES / "test")
    accuracy = float(np.mean(classifier.predict(test) == test.labels))
    assert accuracy == pytest.approx(metrics["accuracy"])
    assert accuracy > 0.7  # source features: 0.887 measured; chance is 0.2


def test_fit_takes_in_memory_splits_from_arrays(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:120] * 16).astype("uint8")
    labels = digits.target[:120] % 3
    splits = kerastl.DataSplits(
        train=kerastl.from_arrays(images[:90], labels[:90]), val=None,
        test=kerastl.from_arrays(images[90:], labels[90:]), class_names=["0", "1", "2"],
    )
    result = fit(kerastl.RunConfig(backbone="MobileNetV2", backbone_kwargs={"alpha": 0.35},
                                   weights=None, image_size=32, epochs=1, mode="frozen",
                                   augment=[], verbose=0, output=str(tmp_path / "o")),
                 splits=splits)
    assert result.metrics["n_examples"] == 30
    assert (result.output_dir / "metrics.json").is_file()
    with pytest.raises(kerastl.ConfigError, match="data"):
        fit(kerastl.RunConfig(data=TINY["data"], output=str(tmp_path / "p")), splits=splits)

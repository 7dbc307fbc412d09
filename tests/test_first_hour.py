"""A new user's first hour (issue 27): no silent failure, messages in the caller's
language, logs without escapes, a run that says what to do next.

The folder is the one the issue was found with: 4 classes x 30 digits at 32 px
(scikit-learn's ``load_digits``, upscaled), ``--weights none`` because nothing can be
downloaded. Commands run as subprocesses where the test is about the command line
(exit codes, stderr, a stdout that is not a terminal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import kerastl
from kerastl.core.console import cli_language, epoch_in_phase, hint, speaking_to_cli
from kerastl.data.datasets import digits_folder
from kerastl.outputs.health import at_chance, chance_accuracy, check_network
from kerastl.recipes.plan import plan_phases
from kerastl.recipes.resolve import native_size, resolve_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4
PER_CLASS = 30
SIDE = 32


def write_digits(root: Path, *, split: str, per_class: int = PER_CLASS,
                 classes: int = CLASSES) -> Path:
    """``root/split/<digit>/<n>.png``: real handwritten digits at 32 px, RGB."""
    return digits_folder(root, split=split, per_class=per_class, classes=classes, side=SIDE)


def run_command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m kerastl.<module> ARGS`` with stdout a pipe, as in a redirected log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    # As a user runs it: kerastl then holds TensorFlow's import log back (conftest sets
    # TF_CPP_MIN_LOG_LEVEL for this process, which would show it).
    for name in ("KERASTL_PROGRESS", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", f"kerastl.{module}", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    for text in expected:
        assert text in done.stderr, done.stderr[-2000:]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, split="train")
    write_digits(root, split="test")
    return root


@pytest.fixture(scope="module")
def default_run(digits) -> tuple[Path, subprocess.CompletedProcess]:
    """The issue's command with every default: ``--weights none``, ``--mode auto``."""
    done = run_command("train", "--data", digits / "train", "--test-data", digits / "test",
                       "--weights", "none", "--output", digits / "run", cwd=digits)
    assert done.returncode == 0, done.stderr[-3000:]
    return digits / "run", done


# ------------------------------------------------------------------ auto, no weights
def test_auto_without_pretrained_weights_plans_scratch_at_the_images_own_size(digits):
    config = resolve_config(kerastl.RunConfig(data=str(digits / "train"), weights="none"),
                            native_size=lambda resolved: native_size(resolved, None))
    assert config.image_size == SIDE  # not the backbone's 224
    plan = plan_phases(config, steps_per_epoch=4)
    scratch = plan_phases(config.replace(mode="scratch"), steps_per_epoch=4)
    assert [(p.mode, p.bn_policy, p.fit, p.epochs, p.lr) for p in plan.phases] == \
        [(p.mode, p.bn_policy, p.fit, p.epochs, p.lr) for p in scratch.phases]
    assert any("no pretrained weights" in reason and "at 32 px" in reason
               for reason in plan.reasons)


def test_a_weights_file_that_never_trained_counts_as_no_pretrained_weights(tmp_path):
    import keras

    from kerastl.models.weights import has_pretrained_weights

    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                          input_shape=(32, 32, 3))
    base.save_weights(tmp_path / "random.weights.h5")
    assert not has_pretrained_weights(str(tmp_path / "random.weights.h5"))
    source = kerastl.data.samples.source_backbone()
    assert has_pretrained_weights(source["weights"])
    config = resolve_config(kerastl.RunConfig(data="x", weights=str(tmp_path / "random.weights.h5"),
                               backbone="MobileNetV2", image_size=32))
    assert [p.mode for p in plan_phases(config, steps_per_epoch=4).phases] == ["scratch"]


@pytest.mark.slow
@pytest.mark.numerics
def test_default_run_without_weights_learns_at_the_images_own_size(default_run):
    out, done = default_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["image_size"] == SIDE
    assert [p["mode"] for p in saved["phases"]] == ["scratch"]
    check = json.loads((out / "run.json").read_text())["network_check"]
    # Chance is 0.25; the run stayed there for 75 epochs. Scratch for 15 epochs
    # reached 0.83 there; the default budget here is 75 epochs.
    assert check["status"] == "ok", check
    assert check["network_accuracy"] >= 0.6, check
    history = (out / "history.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in history[1:]]
    assert min(losses) < 0.8 * np.log(CLASSES)


# ------------------------------------------------------------------ console output
@pytest.mark.slow
def test_redirected_log_has_no_escapes_one_line_per_epoch_and_next_commands(default_run):
    out, done = default_run
    log = done.stdout
    assert "\x1b" not in log and "\r" not in log and "\b" not in log
    epochs = [line for line in log.splitlines() if line.startswith("Epoch ")]
    total = len((out / "history.csv").read_text().splitlines()) - 1
    assert len(epochs) == total
    assert epochs[0].startswith(f"Epoch 1/{total} (scratch): ")
    assert epochs[-1].startswith(f"Epoch {total}/{total} (scratch): ")
    assert all(len(line) <= 120 for line in log.splitlines() if line.startswith("Plan:"))
    assert sum("validation" in line for line in log.splitlines()
               if line.startswith("Plan:")) == 1  # said once
    summary = log[log.index("kerastl run summary"):]
    assert "network + pixel blend" in summary and "network alone" in summary
    assert "loss (smoothing 0.1)" in summary and "cross-entropy" in summary
    assert f"python -m kerastl.evaluate {out}" in log
    assert f"python -m kerastl.predict {out}" in log


@pytest.mark.slow
def test_evaluate_and_predict_take_the_run_folder(default_run, digits):
    out, _ = default_run
    evaluated = run_command("evaluate", out, digits / "test", cwd=digits)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "cross-entropy" in evaluated.stdout and "label_smoothing=0.1" in evaluated.stdout
    predicted = run_command("predict", out, digits / "test" / "0", "--output",
                            digits / "pred.csv", cwd=digits)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert f"Predictions for {PER_CLASS} image(s) written to" in predicted.stdout
    assert len((digits / "pred.csv").read_text().splitlines()) == PER_CLASS + 1


# ------------------------------------------------------------------ a dead network
def test_network_at_chance_is_named_beside_a_blended_accuracy(digits, tmp_path, capsys):
    """Random weights fine-tuned with BatchNorm in inference mode: the issue's trap."""
    result = kerastl.fit(kerastl.RunConfig(
        data=str(digits / "train"), test_data=str(digits / "test"), weights="none",
        mode="full", head_warmup="probe", image_size=SIDE, epochs=2, pixel_blend="on",
        augment=[], output=str(tmp_path / "run")))
    printed = capsys.readouterr().out
    check = json.loads((tmp_path / "run" / "run.json").read_text())["network_check"]
    assert check["status"] == "at_chance", check
    assert result.metrics["network_accuracy"] == check["network_accuracy"]
    assert result.metrics["accuracy"] > check["network_accuracy"]  # the blend carried it
    assert "AT CHANCE" in printed and "network + pixel blend" in printed
    # In Python the fix names arguments; on the CLI it names flags.
    assert "mode='scratch'" in check["fix"]


def test_check_network_names_each_failure_and_passes_a_learner():
    assert check_network(network_accuracy=0.26, chance=0.25, examples=120)["status"] == \
        "at_chance"
    assert check_network(network_accuracy=0.60, chance=0.25, examples=120,
                         probe_accuracy=0.80)["status"] == "below_probe"
    assert check_network(network_accuracy=0.60, chance=0.25, examples=120,
                         pixel_accuracy=0.90)["status"] == "below_pixels"
    ok = check_network(network_accuracy=0.83, chance=0.25, examples=120,
                       probe_accuracy=0.80, pixel_accuracy=0.85)
    assert ok["status"] == "ok" and ok["message"] == ""
    no_weights = check_network(network_accuracy=0.25, chance=0.25, examples=120,
                               pretrained=False, phase_modes=[("full", "frozen")])
    assert "BatchNorm in inference mode" in no_weights["message"]
    assert chance_accuracy("multiclass", np.array([0, 1, 1, 1])) == 0.75
    assert not at_chance(0.40, 0.25, 1000) and at_chance(0.27, 0.25, 120)


# ------------------------------------------------------------------ caller's language
def test_hints_name_flags_on_the_cli_and_arguments_in_python():
    assert hint("on_bad_file", "skip") == "on_bad_file='skip'"
    with speaking_to_cli():
        assert hint("on_bad_file", "skip") == "--on-bad-file skip"
        assert hint("epochs", "N") == "--epochs N"
    fields = {"on_bad_file": "--on-bad-file", "bn_policy": "--bn-policy", "lr": "--lr"}
    assert cli_language("or pass on_bad_file='skip'; lr=1e-3", fields) == \
        "or pass --on-bad-file skip; --lr 1e-3"
    code = "Rebuild it with kerastl.build_model(..., bn_policy='train')."
    assert cli_language(code, fields) == code  # Python code stays Python


def test_epochs_are_counted_within_their_phase():
    rows = [{"epoch": 1, "phase": "probe"}] + [{"epoch": e, "phase": "full"}
                                               for e in range(2, 21)]
    assert epoch_in_phase(rows, 20) == "full epoch 19/19"
    assert epoch_in_phase(rows, 1) == "the probe"


def test_bad_choice_is_one_error_line_with_the_valid_values(tmp_path):
    done = run_command("train", "--mode", "frozn", cwd=tmp_path)
    assert_one_line_error(done, "invalid choice: 'frozn'", "'frozen'", "'scratch'")
    assert len(done.stderr.strip().splitlines()) <= 2  # not the 39-line usage


def test_one_class_bad_files_and_missing_models_get_cli_messages(digits, tmp_path):
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one / "cat" / f"{i}.png")
    done = run_command("train", "--data", one, "--weights", "none", "--output",
                       tmp_path / "o1", cwd=tmp_path)
    assert_one_line_error(done, "found one class ('cat')", "at least two are needed")
    assert "num_classes" not in done.stderr
    bad = tmp_path / "bad"
    for label in ("a", "b"):
        (bad / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(bad / label / f"{i}.png")
    (bad / "a" / "broken.png").write_bytes(b"not an image")
    done = run_command("train", "--data", bad, "--weights", "none", "--output",
                       tmp_path / "o2", cwd=tmp_path)
    assert_one_line_error(done, "--on-bad-file skip")
    assert "on_bad_file=" not in done.stderr
    missing = run_command("evaluate", tmp_path / "runs" / "nope" / "model.keras",
                          digits / "test", cwd=tmp_path)
    assert_one_line_error(missing, "model not found:")
    no_model = run_command("predict", tmp_path, digits / "test" / "0", cwd=tmp_path)
    assert_one_line_error(no_model, "no model.keras in the folder")


@pytest.mark.slow
def test_skipped_files_are_listed_on_the_console(tmp_path):
    data = tmp_path / "data"
    write_digits(tmp_path, split="data", per_class=8, classes=2)
    (data / "0" / "broken.png").write_bytes(b"not an image")
    done = run_command("train", "--data", data, "--weights", "none", "--mode", "frozen",
                       "--on-bad-file", "skip", "--epochs", "1", "--image-size", "32",
                       "--output", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    unwrapped = done.stdout.replace("\n  ", " ")  # plan lines fold at 100 columns
    plan = [line for line in unwrapped.splitlines() if "left out" in line]
    assert plan and "broken.png" in plan[0] and "--on-bad-file skip" in plan[0]
    assert "broken.png" in (tmp_path / "run" / "skipped_files.txt").read_text()


def test_an_imbalanced_learner_is_not_called_at_chance():
    # 90/10 binary: 0.93 accuracy is near the majority rate, but the minority class is
    # found (balanced accuracy 0.8): that network learned.
    check = check_network(network_accuracy=0.93, chance=0.90, examples=200,
                          balanced_accuracy=0.80, classes=2)
    assert check["status"] == "ok", check
    stuck = check_network(network_accuracy=0.90, chance=0.90, examples=200,
                          balanced_accuracy=0.50, classes=2)
    assert stuck["status"] == "at_chance"

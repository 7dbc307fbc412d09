"""Crash safety, divergence, preemption, determinism and safe loading, end to end.

Every run is a real ``python -m kerastl.train`` process on the shipped
``data_samples/fashion`` at 32x32 from the shipped source backbone (pretrained: a
random base with frozen BatchNorm has ~1e-12 features, and its runs would "match"
whatever the resume did): a head epoch then three fine-tuning epochs, so
interruptions land mid-phase, after a phase change. One uninterrupted run is the
reference every resumed run must reproduce, base and head, in both call modes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kerastl
from kerastl.data.samples import data_samples_dir, source_backbone
from kerastl.outputs.history import read_history_csv

from .numerics import RESUMED, assert_close

pytestmark = pytest.mark.slow

SAMPLES = data_samples_dir() / "fashion"
SOURCE = source_backbone()
# float32, not "auto" (mixed_bfloat16 on CPUs with avx512_bf16): the same on every CPU.
TINY = ["--data", str(SAMPLES / "train"), "--val-data", str(SAMPLES / "val"),
        "--test-data", str(SAMPLES / "test"), "--image-size", "32",
        "--backbone", SOURCE["backbone"], "--backbone-args",
        ",".join(f"{k}={v}" for k, v in SOURCE["backbone_kwargs"].items()),
        "--weights", SOURCE["weights"],
        "--precision", "float32", "--augment", "none", "--batch-size", "64"]
EPOCHS = 4
# Checkpoints every epoch (the interruptions wait for one) and deterministic kernels
# (same-seed runs are compared bit for bit).
RUN_FLAGS = [*TINY, "--mode", "finetune", "--epochs", str(EPOCHS), "--head-epochs", "1",
             "--verbose", "0", "--checkpoint-interval", "0", "--deterministic"]
RUN = [*RUN_FLAGS, "--seed", "5"]
TIMEOUT = 300


class Run:
    """One ``python -m kerastl.train`` process writing into ``output``."""

    def __init__(self, output: Path, *flags: str) -> None:
        self.output = Path(output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.output.parent / f"{self.output.name}.log"
        self._stdout = open(self._log.with_suffix(".out"), "w")  # noqa: SIM115
        self._stderr = open(self._log.with_suffix(".err"), "w")  # noqa: SIM115
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kerastl.train", *flags, "--output", str(self.output)],
            stdout=self._stdout, stderr=self._stderr, env=env,
        )

    def wait(self) -> int:
        try:
            code = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self._stdout.close()
            self._stderr.close()
        return code

    @property
    def stdout(self) -> str:
        return self._log.with_suffix(".out").read_text()

    @property
    def stderr(self) -> str:
        return self._log.with_suffix(".err").read_text()

    def finish(self) -> Run:
        """Wait and require success."""
        code = self.wait()
        assert code == 0, f"exit {code}\n{self.stderr[-3000:]}"
        return self

    def wait_for_checkpoint(self, name: str) -> Path:
        """Poll until ``checkpoints/<name>`` is in place (renamed there when complete)."""
        target = self.output / "checkpoints" / name
        deadline = time.monotonic() + TIMEOUT
        while not target.is_dir():
            if self.process.poll() is not None:
                self.wait()
                pytest.fail(f"run ended ({self.process.returncode}) before {name}:\n"
                            f"{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.process.kill()
                self.wait()
                pytest.fail(f"no {name} after {TIMEOUT} s")
            time.sleep(0.01)
        return target


def _resume(output: Path) -> Run:
    return Run(output, "--resume", "--verbose", "2")


def _weights(output: Path) -> dict[str, np.ndarray]:
    """Every weight of the saved model (base and head), and its outputs on test images.

    ``out:training=True`` has head dropout on: both models' dropout seeds are set alike
    first (a saved model does not keep its seed state).
    """
    import keras

    model = kerastl.load_model(output / "model.keras")
    values = {w.path: np.asarray(w) for w in model.weights}
    images = next(iter(kerastl.data.folders.from_folder(SAMPLES / "test").batches(32, 8)))[0]
    for training in (True, False):
        for variable in model.variables:
            if variable.path.endswith("seed_generator_state"):
                variable.assign(keras.ops.zeros_like(variable))
        values[f"out:training={training}"] = np.asarray(model(images, training=training))
    return values


def _assert_same_weights(expected: dict, actual: dict) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert_close(actual[name], value, RESUMED, err_msg=name)


def _history(output: Path) -> list[dict]:
    """history.csv rows without the wall-clock column."""
    rows = read_history_csv(output / "history.csv")
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _checkpoints(output: Path) -> list[str]:
    return sorted(p.name for p in (output / "checkpoints").glob("epoch-*") if p.is_dir())


def _interrupt_when_checkpointed(targets: dict[signal.Signals, Run], name: str) -> None:
    """Send each run its signal as soon as its ``name`` checkpoint is in place.

    Checkpoints are renamed into place when complete, so one that exists is whole; the
    run is then in the middle of its next epoch.
    """
    pending = dict(targets)
    deadline = time.monotonic() + TIMEOUT
    while pending:
        for signum, run in list(pending.items()):
            if (run.output / "checkpoints" / name).is_dir():
                run.process.send_signal(signum)
                del pending[signum]
            elif run.process.poll() is not None:
                pytest.fail(f"run ended ({run.process.returncode}) before {name}:\n"
                            f"{run.stderr[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {name} after {TIMEOUT} s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of this module, side by side to share the wall time.

    Uninterrupted: seed 5 twice (the reference and its twin), seed 6 once. Interrupted
    once epoch 2 is checkpointed: ``kill -9`` and SIGTERM, then resumed, plus a copy
    of the killed run whose latest checkpoint is truncated. One diverging run.
    """
    root = tmp_path_factory.mktemp("reliability")
    straight = [Run(root / "seed5", *RUN), Run(root / "seed5-again", *RUN),
                Run(root / "seed6", *RUN_FLAGS, "--seed", "6")]
    killed, stopped = Run(root / "killed", *RUN), Run(root / "sigterm", *RUN)
    # The head epoch trains normally; fine-tuning at lr 1e-3 * 1e35 overflows float32.
    diverged = Run(root / "diverged", *TINY, "--mode", "finetune", "--epochs", "2",
                   "--head-epochs", "1",
                   "--optimizer", "sgd", "--lr", "1e-3", "--finetune-lr-factor", "1e35",
                   "--verbose", "0")
    _interrupt_when_checkpointed({signal.SIGKILL: killed, signal.SIGTERM: stopped},
                                 "epoch-0002")
    facts = {"killed_code": killed.wait(), "sigterm_code": stopped.wait(),
             "sigterm_stderr": stopped.stderr, "killed_checkpoints": _checkpoints(killed.output),
             "sigterm_checkpoints": _checkpoints(stopped.output),
             "finished_before_resume": [(r.output / "model.keras").exists()
                                        for r in (killed, stopped)]}
    saved = facts["killed_checkpoints"]
    assert len(saved) >= 2, saved
    facts["sigterm_state"] = kerastl.training.checkpoints.read_state(
        stopped.output / "checkpoints" / facts["sigterm_checkpoints"][-1])

    # A copy whose latest checkpoint is truncated (a full disk, a torn copy).
    corrupt = root / "corrupt"
    shutil.copytree(killed.output, corrupt)
    weights_file = corrupt / "checkpoints" / saved[-1] / "model.weights.h5"
    with open(weights_file, "r+b") as handle:
        handle.truncate(weights_file.stat().st_size // 2)
    resumed = {"killed": _resume(killed.output), "corrupt": _resume(corrupt),
               "sigterm": _resume(stopped.output)}
    for run in [*straight, *resumed.values()]:
        run.finish()
    facts["diverged_code"] = diverged.wait()
    return {"root": root, "reference": root / "seed5", "weights": _weights(root / "seed5"),
            "again": root / "seed5-again", "seed6": root / "seed6", "facts": facts,
            "resumed": resumed, "diverged": diverged}


def _assert_complete_and_equal_to_reference(runs, output: Path) -> None:
    rows = _history(output)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["phase"] for r in rows] == ["head"] + ["finetune"] * (EPOCHS - 1)
    _assert_same_weights(runs["weights"], _weights(output))


def test_the_reference_run_fine_tuned_the_base_it_started_from(runs):
    source = kerastl.build_model(
        SOURCE["backbone"], 5, input_shape=32, backbone_kwargs=SOURCE["backbone_kwargs"],
        weights=SOURCE["weights"])
    base = source.get_layer("backbone")
    moved = [w.path for w in base.weights
             if not np.array_equal(np.asarray(w), runs["weights"][w.path])]
    assert len(moved) >= 8 and all("_bn/" not in path for path in moved), moved


# ------------------------------------------------------------------ kill -9, corrupt
def test_kill_9_mid_run_then_resume_matches_an_uninterrupted_run(runs):
    facts, resumed = runs["facts"], runs["resumed"]["killed"]
    assert facts["killed_code"] == -signal.SIGKILL
    assert facts["finished_before_resume"][0] is False, "the run finished before the kill"
    saved = facts["killed_checkpoints"]
    assert saved[-1] < f"epoch-{EPOCHS:04d}", saved
    assert f"Resuming from {resumed.output / 'checkpoints' / saved[-1]}" in resumed.stdout
    _assert_complete_and_equal_to_reference(runs, resumed.output)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(runs):
    saved, resumed = runs["facts"]["killed_checkpoints"], runs["resumed"]["corrupt"]
    assert re.search(rf"Checkpoint .*{saved[-1]}.* is unreadable .*falling back",
                     resumed.stderr), resumed.stderr[-3000:]
    assert f"Resuming from {resumed.output / 'checkpoints' / saved[-2]}" in resumed.stdout
    _assert_complete_and_equal_to_reference(runs, resumed.output)
    assert _checkpoints(resumed.output)[-1] == f"epoch-{EPOCHS:04d}"


# ------------------------------------------------------------------ SIGTERM
def test_sigterm_stops_with_143_says_how_to_resume_and_resume_completes(runs):
    facts = runs["facts"]
    assert facts["sigterm_code"] == 143, facts["sigterm_stderr"][-3000:]
    assert "SIGTERM" in facts["sigterm_stderr"] and "--resume" in facts["sigterm_stderr"]
    assert facts["finished_before_resume"][1] is False
    saved, state = facts["sigterm_checkpoints"], facts["sigterm_state"]
    assert saved and saved[-1] >= "epoch-0002"
    assert state.epoch == int(saved[-1].split("-")[1]) and len(state.history) == state.epoch
    _assert_complete_and_equal_to_reference(runs, runs["resumed"]["sigterm"].output)


# ------------------------------------------------------------------ NaN
def test_divergence_exits_3_naming_phase_epoch_and_lr_and_keeps_checkpoints(runs):
    run = runs["diverged"]
    assert runs["facts"]["diverged_code"] == 3, run.stderr[-3000:]
    message = run.stderr.strip().splitlines()[-1]
    assert re.search(r"Loss became (nan|inf) in phase 'finetune', epoch 2, step \d+ "
                     r"at learning rate [0-9.]+e\+3\d", message), message
    assert _checkpoints(run.output) == ["epoch-0001"]
    state = kerastl.training.checkpoints.read_state(run.output / "checkpoints" / "epoch-0001")
    assert state.epoch == 1 and np.isfinite(state.history[0]["loss"])
    assert not (run.output / "model.keras").exists()


# ------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_weights_and_history_another_seed_does_not(runs):
    again = _weights(runs["again"])
    assert list(again) == list(runs["weights"])
    # Bit-identical: a same-seed rerun performs the same operations in the same order.
    for name, value in runs["weights"].items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    assert _history(runs["again"]) == _history(runs["reference"])
    other = _weights(runs["seed6"])
    assert any(not np.array_equal(other[name], value)
               for name, value in runs["weights"].items())
    assert _history(runs["seed6"]) != _history(runs["reference"])


def test_run_json_records_the_versions_of_everything_that_trained(runs):
    import json
    import platform

    import keras
    import tensorflow as tf

    versions = json.loads((runs["reference"] / "run.json").read_text())["versions"]
    assert versions["kerastl"] == kerastl.__version__
    assert versions["tensorflow"] == tf.__version__
    assert versions["keras"] == keras.__version__
    assert versions["python"] == platform.python_version()


# ------------------------------------------------------------------ safe loading
UNSAFE = re.compile(r"enable_unsafe_deserialization|safe_mode\s*=\s*False"
                    r"|allow_pickle\s*=\s*True")


def test_package_never_turns_off_safe_deserialization():
    package = Path(kerastl.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 10
    offending = [f"{path.relative_to(package)}:{number}: {line.strip()}"
                 for path in sources
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if UNSAFE.search(line)]
    assert offending == []


def test_load_model_refuses_safe_mode_false_and_lambda_layers(runs, tmp_path):
    import keras

    with pytest.raises(kerastl.ConfigError, match="safe_mode=True"):
        kerastl.load_model(runs["reference"] / "model.keras", safe_mode=False)
    inputs = keras.Input((2,))
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    lambda_model.save(path)
    with pytest.raises(ValueError, match="unsafe"):
        kerastl.load_model(path)

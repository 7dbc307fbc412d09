"""Distributed training through the kerastl Trainer, each run in its own process.

Logical devices and ``TF_CONFIG`` must be set before TensorFlow initialises, so
every run here is a child Python process; the test only compares what they write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kerastl.data.samples import REPO_ROOT, data_samples_dir
from kerastl.outputs.history import read_history_csv
from kerastl.training.strategies import local_cluster

from .conftest import source_backbone
from .numerics import (
    MOBILENETV3_FORWARD,
    MOBILENETV3_TRAINING,
    assert_close,
    assert_same_model,
    assert_same_training,
)

pytestmark = pytest.mark.slow  # every test here trains in two child processes

SAMPLES = data_samples_dir() / "fashion"
CHILD_TIMEOUT = 240  # seconds; a hung collective must fail the test, not block CI

# One Trainer run on fixed in-memory data. argv: strategy ("default" or "mirrored"),
# output .npz, backbone as JSON. The shipped source backbone is used because a
# randomly initialised one with BatchNorm in inference mode outputs ~1e-12 features:
# its gradients vanish and any two runs would "match". Both runs split the CPU into
# 2 logical devices, so they differ only in the strategy: one replica with the
# global batch, or two with half each.
TRAINER_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    from kerastl.training.strategies import make_strategy, split_logical_cpus

    devices = split_logical_cpus(2)

    import keras
    import numpy as np
    import tensorflow as tf

    import kerastl
    from kerastl.training.trainer import Trainer
    from kerastl.training.phase_data import PhaseData

    strategy_name, out, source = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(strategy_name, devices=devices)
    rng = np.random.default_rng(0)
    # 67 = 4 x 16 + 3: the last global batch of 3 splits 2 + 1 across the replicas, so
    # a loss averaged per replica instead of over the global batch shows up.
    images = rng.uniform(0, 255, (67, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 3, 67).astype("int32")
    with strategy.scope():
        model = kerastl.build_model(source["backbone"], 3, input_shape=32,
                                    weights=source["weights"], head="avg", dense_units=(),
                                    dropout=0.0, backbone_kwargs=source["backbone_kwargs"])
    # BatchNorm stays in inference mode (bn_policy="frozen"): per-replica batch
    # statistics would otherwise legitimately differ from whole-batch ones.
    train = lambda epoch: tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    data = PhaseData(model, train, None, steps_per_epoch=5)
    initial = model.get_weights()
    phases = [kerastl.Phase("head", 1, lr=0.05),
              kerastl.Phase("finetune", 1, mode="finetune", unfreeze_blocks=2, lr=0.05)]
    # SGD, not Adam: Adam is invariant to the gradient's scale, so it would hide a
    # loss averaged per replica instead of over the global batch.
    state = Trainer(model, strategy, optimizer="sgd", schedule="constant",
                    verbose=0).run(phases, lambda phase: data)
    moved = sum(not np.array_equal(a, b) for a, b in zip(initial, model.get_weights()))
    probe = images[:8]
    np.savez(out, replicas=strategy.num_replicas_in_sync, moved=moved,
             loss=[row["loss"] for row in state.history],
             out_train=np.asarray(model(probe, training=True)),
             out_infer=np.asarray(model(probe, training=False)), *model.get_weights(),
             **{f"initial_{i}": w for i, w in enumerate(initial)})
    """
)


# Feature extraction in shares by two workers (MultiWorkerMirroredStrategy, each a
# process). argv: output .npz, backbone as JSON; TF_CONFIG names the worker. Records
# how many images each call of the extractor received, and the rows each worker
# reports extracting: 7 rows (4 + 3), 1 row (1 + an empty share), then a cache entry
# only worker 0 holds (it supplies every row), then one both hold.
SHARES_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    from kerastl.training.strategies import make_strategy

    strategy = make_strategy("multiworker")

    import numpy as np

    import kerastl
    from kerastl.data.arrays import from_arrays
    from kerastl.models.build import feature_extractor
    from kerastl.models.feature_cache import FeatureCache
    from kerastl.models.features import run_extractor
    from kerastl.models.worker_features import cached_on_workers, extract_on_workers

    out, source = sys.argv[1], json.loads(sys.argv[2])
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    model = kerastl.build_model(source["backbone"], 3, input_shape=32,
                                weights=source["weights"], head="avg", dense_units=(),
                                backbone_kwargs=source["backbone_kwargs"])
    extractor = feature_extractor(model)
    rng = np.random.default_rng(0)
    data = from_arrays(rng.integers(0, 256, (7, 32, 32, 3)).astype("uint8"),
                       rng.integers(0, 3, 7))
    whole, whole_labels = run_extractor(extractor, data)
    seen = []

    def extract(part):
        seen.append(len(part))
        return run_extractor(extractor, part)

    (shared, shared_labels), here = extract_on_workers(strategy, extract, data)
    (one, one_labels), here_one = extract_on_workers(strategy, extract, data.subset([4]))
    cache = FeatureCache()
    if index == 0:
        cache.get_or_compute("k", lambda: (whole + 1, whole_labels))
    (mixed, _), here_mixed = cached_on_workers(strategy, cache, "k", extract, data)
    (again, _), here_again = cached_on_workers(strategy, cache, "k", extract, data)
    np.savez(out, seen=seen, here=[here, here_one, here_mixed, here_again], whole=whole,
             whole_labels=whole_labels, shared=shared, shared_labels=shared_labels,
             one=one, one_labels=one_labels, mixed=mixed, again=again)
    """
)


def _child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONWARNINGS": "ignore", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _run_trainer(script: Path, strategy: str, out: Path) -> dict[str, np.ndarray]:
    source = json.dumps(source_backbone())
    done = subprocess.run([sys.executable, str(script), strategy, str(out), source],
                          env=_child_env(), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as saved:
        return dict(saved)


def _weights(saved: dict[str, np.ndarray], prefix: str = "arr_") -> list[np.ndarray]:
    return [saved[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) for k in saved))]


@pytest.mark.numerics
def test_mirrored_two_devices_matches_one_device_with_same_global_batch(tmp_path):
    script = tmp_path / "train_once.py"
    script.write_text(TRAINER_SCRIPT)
    single = _run_trainer(script, "default", tmp_path / "single.npz")
    mirrored = _run_trainer(script, "mirrored", tmp_path / "mirrored.npz")
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    # Both phases trained: the head and the unfrozen top blocks moved.
    assert int(single["moved"]) == int(mirrored["moved"]) >= 8
    assert_close(mirrored["loss"], single["loss"], MOBILENETV3_FORWARD)
    after_single, after_mirrored = _weights(single), _weights(mirrored)
    initial = _weights(single, "initial_")
    assert len(after_single) == len(after_mirrored) == len(initial) > 0
    for a, b, start in zip(after_mirrored, after_single, initial, strict=True):
        assert_same_training(a, b, start, MOBILENETV3_TRAINING)
    for key in ("out_train", "out_infer"):
        assert_close(mirrored[key], single[key], MOBILENETV3_FORWARD, err_msg=key)


# ------------------------------------------------------------------ multi-worker
def _cli_flags(output: Path, batch_size: int) -> list[str]:
    """A short run from the source backbone (float32, no dropout: the workers' runs
    are compared with a single process, where masks would differ): two head epochs on
    cached features (the workers extract shares, then shuffle the gathered features
    alike), then one epoch fine-tuning the top two blocks on image batches."""
    source = source_backbone()
    regime = ["--feature-cache", "auto", "--mode", "finetune", "--unfreeze-blocks", "2",
              "--epochs", "3", "--head-epochs", "2"]
    return ["--data", str(SAMPLES / "train"), "--val-data", str(SAMPLES / "val"),
            "--test-data", str(SAMPLES / "test"), "--image-size", "32",
            "--batch-size", str(batch_size), "--backbone", source["backbone"],
            "--backbone-args",
            ",".join(f"{k}={v}" for k, v in source["backbone_kwargs"].items()),
            "--weights", source["weights"], "--precision", "float32", "--dropout", "0",
            "--augment", "none", *regime,
            "--optimizer", "sgd", "--seed", "5", "--verbose", "0", "--output", str(output)]


def _run_all(tmp_path: Path, commands: list[tuple[list[str], dict[str, str]]]) -> None:
    """Run the ``(argv, env)`` commands at once, each logging to ``worker<i>.log``;
    fail with the logs' tails unless all exit 0 within ``CHILD_TIMEOUT``."""
    workers, logs = [], []
    for index, (argv, env) in enumerate(commands):
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115
        logs.append(log)
        workers.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=tmp_path))
    try:
        codes = [worker.wait(timeout=CHILD_TIMEOUT) for worker in workers]
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
        pytest.fail("multi-worker run hung; killed every worker")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    tails = [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(len(commands))]
    assert codes == [0] * len(commands), tails


def _train_on_two_workers_and_alone(tmp_path: Path) -> None:
    """``kerastl.train`` as two workers of batch 32 (outputs ``out0``, ``out1``) and as
    one process of batch 64 (``out2``), at once; every non-chief output lands in its
    ``tmp<i>`` folder."""
    configs = local_cluster(2)
    commands = []
    for index in range(3):  # two workers, and one process alone with the same global batch
        scratch = tmp_path / f"tmp{index}"  # the non-chief's throw-away outputs land here
        scratch.mkdir()
        alone = index == 2
        env = _child_env(TMPDIR=str(scratch)) if alone else _child_env(
            TF_CONFIG=configs[index], TMPDIR=str(scratch))
        strategy = ["--strategy", "default"] if alone else ["--strategy", "multiworker"]
        commands.append(([sys.executable, "-m", "kerastl.train", *strategy,
                          *_cli_flags(tmp_path / f"out{index}",
                                      batch_size=64 if alone else 32)], env))
    _run_all(tmp_path, commands)


def test_multiworker_cli_trains_identically_on_two_workers(tmp_path):
    """Two workers of the CLI train the model one process trains, and the head phase's
    cached features come from each worker's own share of the images, gathered."""
    _train_on_two_workers_and_alone(tmp_path)

    import kerastl

    chief_out = tmp_path / "out0"
    assert (chief_out / "model.keras").is_file() and (chief_out / "metrics.json").is_file()
    runtime = json.loads((chief_out / "run.json").read_text())["runtime"]
    assert "2 replica(s)" in runtime and "worker 0 (chief)" in runtime
    # Only the chief writes to --output; worker 1 saved into its own temporary dir.
    assert not (tmp_path / "out1").exists() or not any((tmp_path / "out1").iterdir())
    saved_by_worker1 = list((tmp_path / "tmp1").glob("kerastl-worker1-*/model.keras"))
    assert len(saved_by_worker1) == 1
    assert not list((tmp_path / "tmp0").glob("kerastl-worker*"))
    chief = kerastl.load_model(chief_out / "model.keras")
    other = kerastl.load_model(saved_by_worker1[0])
    alone = kerastl.load_model(tmp_path / "out2" / "model.keras")
    images = next(iter(kerastl.data.folders.from_folder(SAMPLES / "test").batches(32, 8)))[0]
    assert_same_model(chief, other, images, rtol=0, atol=0)  # synchronised: identical
    # Two workers of 32 train like one process with batches of 64: gradients summed
    # across workers differ from one device's by float32 round-off only.
    assert_same_model(alone, chief, images, rtol=1e-4, atol=1e-6)
    source = kerastl.build_model(source_backbone()["backbone"], 5, input_shape=32,
                                 weights=source_backbone()["weights"],
                                 backbone_kwargs=source_backbone()["backbone_kwargs"])
    moved = [not np.array_equal(a, b) for a, b in
             zip(chief.get_layer("backbone").get_weights(),
                 source.get_layer("backbone").get_weights(), strict=True)]
    assert sum(moved) >= 8  # the top two blocks fine-tuned across the workers
    # 500 training images over a global batch of 64 end in a partial batch of 52,
    # split across the workers; training and validation still complete.
    rows = read_history_csv(chief_out / "history.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) for row in rows)
    alone_rows = read_history_csv(tmp_path / "out2" / "history.csv")
    for row, reference in zip(rows, alone_rows, strict=True):
        assert row["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
    assert json.loads((chief_out / "metrics.json").read_text())["accuracy"] == pytest.approx(
        json.loads((tmp_path / "out2" / "metrics.json").read_text())["accuracy"], abs=1e-9)
    notes = json.loads((chief_out / "run.json").read_text())["notes"]
    shares = ("this worker extracted the features of 250 of 500 training and 75 of 150 "
              "validation images")
    assert any(shares in note for note in notes), notes
    alone_notes = json.loads((tmp_path / "out2" / "run.json").read_text())["notes"]
    assert not any("worker extracted" in note for note in alone_notes)


def test_two_workers_extract_shares_that_gather_into_one_pass_in_data_order(tmp_path):
    script = tmp_path / "shares.py"
    script.write_text(SHARES_SCRIPT)
    commands = [([sys.executable, str(script), str(tmp_path / f"shares{i}.npz"),
                  json.dumps(source_backbone())], _child_env(TF_CONFIG=config))
                for i, config in enumerate(local_cluster(2))]
    _run_all(tmp_path, commands)
    saved = [dict(np.load(tmp_path / f"shares{i}.npz")) for i in range(2)]
    # Each worker ran the base on its own rows only (1 image more for an empty
    # share's shapes), and says how many rows it extracted.
    assert saved[0]["seen"].tolist() == [4, 1, 1] and saved[1]["seen"].tolist() == [3, 1, 1]
    assert saved[0]["here"].tolist() == [4, 1, 0, 0] and saved[1]["here"].tolist() == [3, 0, 0, 0]
    whole = saved[0]["whole"]
    assert np.abs(whole).max() > 1e-3  # features that can tell rows apart
    for worker in saved:
        np.testing.assert_allclose(worker["shared"], whole, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(worker["shared_labels"], worker["whole_labels"])
        np.testing.assert_allclose(worker["one"], whole[4:5], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(worker["one_labels"], worker["whole_labels"][4:5])
        # Worker 0's entry (marked + 1) reached worker 1, whose cache had none.
        np.testing.assert_allclose(worker["mixed"], whole + 1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(worker["again"], whole + 1, rtol=1e-5, atol=1e-6)

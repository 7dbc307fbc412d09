"""The transfer suite's task folders: disjoint, stratified, deterministic (no training).

The suite chooses kerastl's defaults on validation images and reports on test images,
so a train/val/test overlap or a draw that changes between invocations would silently
invalidate every number it produces.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerastl.data.datasets import write_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location(
        "transfer_suite", REPO / "benchmarks" / "transfer_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_suite"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("transfer_suite", None)


@pytest.fixture()
def tiny_fashion(tmp_path, monkeypatch):
    """A Fashion-MNIST look-alike: 12 train and 6 test images per class, pixel = index."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("t10k", 6)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        # Image i is filled with i % 251 so a written PNG says which image it came from.
        images = (np.arange(len(labels)) % 251).astype(np.uint8)[:, None, None]
        images = np.broadcast_to(images, (len(labels), 28, 28)).copy()
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    monkeypatch.setenv("KERASTL_FASHION_MNIST", str(tmp_path))
    return tmp_path


def files(folder: Path) -> dict[str, list[str]]:
    return {split: sorted(p.relative_to(folder / split).as_posix()
                          for p in (folder / split).rglob("*.png"))
            for split in ("train", "val", "test")}


def test_fashion_task_is_disjoint_stratified_and_from_the_right_split(suite, tiny_fashion,
                                                                      tmp_path):
    task = suite.Task("T1", "S_a", "P1", per_class=3, seed=1, val_per_class=4,
                      test_per_class=5)
    folder = suite.materialise_task(task, tmp_path / "root")
    split_files = files(folder)
    names = [Path(f).name for f in split_files["train"] + split_files["val"]]
    assert len(set(names)) == len(names)  # train and val never share an image
    assert all(n.startswith("train_") for n in names)
    assert all(Path(f).name.startswith("test_") for f in split_files["test"])
    for split, count in (("train", 3), ("val", 4), ("test", 5)):
        per_class = {c: sum(f.startswith(c + "/") for f in split_files[split])
                     for c in task.class_names()}
        assert per_class == dict.fromkeys(["sandal", "shirt", "sneaker", "bag", "ankle_boot"],
                                          count)
    # Each PNG is the official image its name points to, in its class's folder.
    from kerastl.data.datasets import FASHION_MNIST_CLASSES, read_idx

    labels = read_idx(tiny_fashion / "train-labels-idx1-ubyte")
    for relative in split_files["train"]:
        index = int(Path(relative).stem.split("_")[1])
        pixels = np.asarray(Image.open(folder / "train" / relative))
        assert pixels.shape == (28, 28) and pixels[0, 0] == index % 251
        assert relative.split("/")[0] == FASHION_MNIST_CLASSES[labels[index]]


def test_tasks_are_deterministic_and_share_their_target_test_set(suite, tiny_fashion, tmp_path):
    make = lambda seed: suite.Task("T1", "S_a", "P3", per_class=2, seed=seed,  # noqa: E731
                                   val_per_class=3, test_per_class=4)
    first = files(suite.materialise_task(make(1), tmp_path / "a"))
    again = files(suite.materialise_task(make(1), tmp_path / "b"))
    other = files(suite.materialise_task(make(2), tmp_path / "c"))
    assert first == again
    assert first["train"] != other["train"]
    assert first["test"] == other["test"]  # one test draw per target, whatever the task


def test_existing_task_folder_is_reused_and_a_changed_definition_rebuilds_it(
        suite, tiny_fashion, tmp_path):
    task = suite.Task("T2", "S_a", "P1", per_class=2, seed=1, val_per_class=2,
                      test_per_class=2)
    folder = suite.materialise_task(task, tmp_path)
    marker = folder / "train" / "marker.txt"
    marker.write_text("kept")
    assert suite.materialise_task(task, tmp_path) == folder and marker.is_file()
    bigger = suite.Task("T2", "S_a", "P1", per_class=2, seed=1, val_per_class=2,
                        test_per_class=3)
    suite.materialise_task(bigger, tmp_path)
    assert not marker.exists()
    assert len(files(folder)["test"]) == 15


def test_digits_task_holds_out_test_images_before_drawing_train_and_val(suite, tmp_path):
    t8, t9 = suite.TASKS["T8"], suite.TASKS["T9"]
    a, b = suite.task_arrays(t8), suite.task_arrays(t9)
    for arrays in (a, b):
        tags = {split: set(origins) for split, (_, _, origins) in arrays.items()}
        assert not (tags["train"] & tags["val"] or tags["train"] & tags["test"]
                    or tags["val"] & tags["test"])
        images, labels, _ = arrays["train"]
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8)
        assert images.max() == 255  # 0-16 digits scaled to 0-255
    assert np.bincount(a["train"][1]).tolist() == [10] * 10
    assert np.bincount(b["val"][1]).tolist() == [50] * 10
    assert a["test"][2] == b["test"][2]


def test_default_command_is_data_and_weights_plus_the_backbone_arguments(suite, tmp_path):
    record = {"weights_path": "/w/backbone.weights.h5", "backbone": "MobileNetV3Small",
              "backbone_kwargs": {"alpha": 0.75}, "input_size": 64}
    spec = suite.RunSpec(suite.TASKS["T1"], suite.Candidate.parse("default="), record,
                         Path("/t"), bare=False, code="c")
    assert spec.argv(Path("/o")) == [
        "--data", "/t/train", "--weights", "/w/backbone.weights.h5",
        "--backbone", "MobileNetV3Small", "--image-size", "64", "--backbone-args",
        "alpha=0.75", "--verbose", "2", "--output", "/o"]
    bare = suite.RunSpec(suite.TASKS["T1"], suite.Candidate.parse("lr=--lr 3e-3"), record,
                         Path("/t"), bare=True, code="c")
    assert bare.argv(Path("/o"))[:4] == ["--data", "/t/train", "--weights",
                                         "/w/backbone.weights.h5"]
    assert bare.argv(Path("/o"))[4:8] == ["--verbose", "2", "--lr", "3e-3"]
    assert spec.key() != bare.key()


def test_grid_best_is_chosen_on_validation_not_test(suite):
    grid = {"a": {"status": "ok", "flags": [], "val_accuracy": 0.8, "test_accuracy": 0.5},
            "b": {"status": "ok", "flags": [], "val_accuracy": 0.7, "test_accuracy": 0.9},
            "c": {"status": "failed", "flags": [], "val_accuracy": None, "test_accuracy": None}}
    assert suite.grid_best(grid)["point"] == "a"


def test_summary_margins_and_goals_use_the_grid_point_chosen_on_validation(suite):
    def run(val, test):
        return {"status": "ok", "flags": [], "val_accuracy": val, "test_accuracy": test}

    report = {"tasks": {
        "T1": {"pixels": {"val_accuracy": 0.80, "test_accuracy": 0.80},
               "candidates": {"default": run(0.90, 0.85)},
               "grid_best": suite.grid_best({"a": run(0.91, 0.84), "b": run(0.90, 0.99)})},
        "T2": {"pixels": {"val_accuracy": 0.70, "test_accuracy": 0.70},
               "candidates": {"default": {"status": "failed", "val_accuracy": None,
                                          "test_accuracy": None}},
               "grid_best": suite.grid_best({"a": run(0.75, 0.72)})},
    }}
    test = suite.summarise(report, "test")["default"]
    assert test["mean_margin_vs_pixels"] == pytest.approx((0.05 - 0.70) / 2)
    assert test["worst_margin_vs_pixels"] == {"value": -0.70, "task": "T2"}  # failed = 0
    assert test["worst_gap_to_grid_best"] == {"value": 0.72, "task": "T2"}
    assert not test["beats_pixels_on_every_task"]
    val = suite.summarise({"tasks": {"T1": report["tasks"]["T1"]}}, "val")["default"]
    assert val["beats_pixels_on_every_task"]
    assert val["within_2_points_of_grid_best_on_every_task"]  # 0.91 - 0.90 <= 0.02


def test_grid_code_reads_the_earlier_codes_runs_and_never_trains_under_its_key(
        suite, tmp_path, monkeypatch):
    record = {"weights_path": "/w/b.h5", "backbone": "MobileNetV2", "backbone_kwargs": {},
              "input_size": 32}
    monkeypatch.setattr(suite, "ensure_sources", lambda names, root, retrain: {
        name: record for name in names})
    monkeypatch.setattr(suite, "materialise_task", lambda task, root: tmp_path / task.name)
    monkeypatch.setattr(suite, "pixels_baseline", lambda task_dir: {"val_accuracy": 0.5})
    trained = []
    monkeypatch.setattr(suite, "run_or_load", lambda spec, root, **kw: trained.append(
        (spec.candidate.name, spec.code)) or {"status": "ok", "val_accuracy": 0.6, "flags": [],
                                              "test_accuracy": 0.6})
    args = suite.parse_args(["--tasks", "T1", "--grid", "--grid-modes", "frozen",
                             "--grid-lrs", "1e-2", "--root", str(tmp_path), "--tag", "now",
                             "--grid-code", "before"])
    with pytest.raises(SystemExit, match="no successful cached run for --grid-code before"):
        suite.run_suite(args)
    assert trained == [("default", "tag:now")]  # the default ran; the grid point did not
    for point in args.grid_points:  # cache the earlier code's grid runs
        spec = suite.RunSpec(suite.TASKS["T1"], point, record, tmp_path / "T1", bare=False,
                             code="before")
        suite.cache_path(tmp_path, spec).parent.mkdir(parents=True, exist_ok=True)
        suite.cache_path(tmp_path, spec).write_text('{"status": "ok"}')
    failed = suite.RunSpec(suite.TASKS["T1"], args.grid_points[0], record, tmp_path / "T1",
                           bare=False, code="before")
    suite.cache_path(tmp_path, failed).write_text('{"status": "failed"}')
    with pytest.raises(SystemExit, match="no successful cached run"):  # nor retried under it
        suite.run_suite(suite.parse_args([*args.argv, "--retry-failed"]))
    suite.cache_path(tmp_path, failed).write_text('{"status": "ok"}')
    trained.clear()
    report = suite.run_suite(args)
    assert trained == [("default", "tag:now")] + [(p.name, "before") for p in args.grid_points]
    assert report["grid_code"] == "before" and report["code"] == "tag:now"


def test_every_task_targets_classes_its_source_never_saw(suite):
    # A source pretrained on a target class would make "transfer" a lookup; tasks
    # outside the suite are added by hand, so every known task is checked.
    for task in suite.KNOWN_TASKS.values():
        if task.target == suite.DIGITS:
            continue  # digits are another data set
        seen = set(suite.PARTITIONS[suite.SOURCES[task.source].partition][0])
        targets = set(suite.PARTITIONS[task.target][1])
        assert len(targets) == 5 and not seen & targets, (task.id, seen & targets)


def test_a_runs_summary_keeps_the_blend_weight_it_chose(suite, tmp_path):
    # The run folders are not committed: the results file alone must say which weight
    # each run blended at, and on what evidence.
    (tmp_path / "config.yaml").write_text("epochs: 3\nmode: auto\n")
    chosen = {"weight": 2.0, "kept": True, "pixel_cv_accuracy": 0.86,
              "probe_cv_accuracy": 0.76, "chosen_on": "the lead"}
    (tmp_path / "run.json").write_text(json.dumps({"pixel_blend": {
        **chosen, "pixels": [28, 28, 3]}}))
    assert suite.run_summary(tmp_path)["pixel_blend"] == chosen
    (tmp_path / "run.json").write_text(json.dumps({"pixel_blend": None}))
    assert "pixel_blend" not in suite.run_summary(tmp_path)

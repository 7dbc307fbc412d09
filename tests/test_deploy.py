"""Export: every format verified by its own runtime, int8 calibration, errors, the CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import kerastl
from kerastl.commands.export import export_main
from kerastl.data.samples import REPO_ROOT, data_samples_dir
from kerastl.deploy import export as deploy

from .conftest import source_backbone

SAMPLES = data_samples_dir() / "fashion"
FAST = {"latency_runs": 2, "log": lambda *_: None}
NEEDS = {"litert": ("ai_edge_litert",), "onnx": ("tf2onnx", "onnxruntime"), "savedmodel": ()}


def _needs(format: str) -> None:
    for module in NEEDS[format]:
        pytest.importorskip(module)


def _small_folders(root: Path) -> dict[str, str]:
    """A few shipped images per class: a run and its export in seconds."""
    counts = {"train": 12, "val": 4, "test": 6}
    for split, count in counts.items():
        for class_dir in sorted((SAMPLES / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                shutil.copy(image, target / image.name)
    return {"data": str(root / "train"), "val_data": str(root / "val"),
            "test_data": str(root / "test")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished, 50 %-pruned float32 run of the shipped source backbone at 32x32."""
    root = tmp_path_factory.mktemp("export")
    source = source_backbone()
    result = kerastl.fit(kerastl.RunConfig(
        **_small_folders(root / "data"), backbone=source["backbone"],
        backbone_kwargs=source["backbone_kwargs"], weights=source["weights"],
        image_size=32, epochs=2, head_epochs=1,
        batch_size=16, augment=[], precision="float32", prune=0.5,
        output=str(root / "run"), verbose=0,
    ))
    return result.output_dir


@pytest.fixture(scope="module")
def blended_run_dir(tmp_path_factory) -> Path:
    """A finished float32 run at 32x32 that ends with the pixel blend."""
    root = tmp_path_factory.mktemp("blended")
    source = source_backbone()
    folders = _small_folders(root / "data")
    del folders["val_data"]  # without validation the blend is kept (with it, maybe not)
    result = kerastl.fit(kerastl.RunConfig(
        **folders, backbone=source["backbone"], mode="full",
        backbone_kwargs=source["backbone_kwargs"], weights=source["weights"],
        image_size=32, epochs=2, batch_size=16, augment=[], precision="float32",
        pixel_blend="on", output=str(root / "run"), verbose=0,
    ))
    assert "pixel_logits" in [layer.name for layer in result.model.layers]
    return result.output_dir


@pytest.mark.parametrize("format,quantize", [("savedmodel", "none"), ("litert", "int8"),
                                             ("onnx", "none")])
def test_a_blended_run_exports_and_agrees_with_keras(blended_run_dir, format, quantize):
    # int8 quantizes each tensor with one scale: the pixels ([0, 255]) must not share
    # a tensor with the network's features (a concatenated blend agreed on 42 %).
    _needs(format)
    report = kerastl.export(blended_run_dir, format, quantize, calibration_images=24, **FAST)
    assert report.agreement >= (0.9 if quantize == "int8" else 1.0)


@pytest.fixture(scope="module")
def default_run_dir(tmp_path_factory) -> Path:
    """The default recipe at 32x32: the multi-depth probe, fine-tuned, then blended."""
    root = tmp_path_factory.mktemp("default")
    source = source_backbone()
    folders = _small_folders(root / "data")
    del folders["val_data"]
    result = kerastl.fit(kerastl.RunConfig(
        **folders, backbone=source["backbone"], backbone_kwargs=source["backbone_kwargs"],
        weights=source["weights"], image_size=32, epochs=2, batch_size=16, augment=[],
        precision="float32", pixel_blend="on", output=str(root / "run"), verbose=0,
    ))
    assert result.config.head == "multidepth"
    return result.output_dir


@pytest.mark.parametrize("format,quantize", [("litert", "int8"), ("onnx", "none")])
def test_the_default_multidepth_run_exports_and_agrees_with_keras(default_run_dir, format,
                                                                 quantize):
    # Its head concatenates the pixels with every depth and standardises them with a
    # Normalization layer: int8 needs the pixels in [0, 1] (on [0, 255] LiteRT agreed
    # on 34 %), and ONNX needs the layer's statistics frozen into the graph (else the
    # runtime asks for them as inputs).
    _needs(format)
    report = kerastl.export(default_run_dir, format, quantize, calibration_images=24, **FAST)
    assert report.agreement >= (0.9 if quantize == "int8" else 1.0)


def test_pruned_run_writes_its_sparsity_and_a_plain_keras_model(run_dir):
    report = json.loads((run_dir / "pruning.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["model_keras_gzip_bytes"] < report["model_keras_bytes"]
    pruned = {name: row for name, row in report["layers"].items() if not row["per_kernel"]}
    assert report["depthwise"] == "kept" and len(pruned) == report["pruned_kernels"]
    assert all(0.5 < row["sparsity"] < 0.6 for row in pruned.values())
    model = kerastl.load_model(run_dir / "model.keras")
    kernel = model.get_layer("backbone").get_layer("conv_1").kernel
    assert np.mean(np.asarray(kernel) == 0) == pytest.approx(
        report["layers"]["conv_1/kernel"]["sparsity"])


@pytest.mark.parametrize("format", ["savedmodel", "litert", "onnx"])
def test_export_is_verified_by_its_own_runtime_and_agrees_with_keras(run_dir, format):
    _needs(format)
    report = kerastl.export(run_dir, format, **FAST)
    folder = deploy.default_output(run_dir, format, "none")
    assert Path(report.path).parent == folder and Path(report.path).exists()
    assert json.loads((folder / "export_report.json").read_text()) == json.loads(
        json.dumps(report.to_dict()))
    assert (folder / "labels.json").read_text() == (run_dir / "labels.json").read_text()
    assert report.evaluated_on == "test" and report.examples == 30
    assert report.agreement == 1.0 and report.max_abs_difference < 1e-4
    assert report.exported_accuracy == report.keras_accuracy
    assert report.keras_accuracy == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["accuracy"])
    assert set(report.latency_ms) >= {"keras_predict", "keras_call", "exported"}
    assert report.bytes["keras"] == (run_dir / "model.keras").stat().st_size
    # The runtime the report used, reloaded from the published file.
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    predict = deploy.load_runtime(report.path, format)
    expected = kerastl.load_model(run_dir / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(predict(images), expected, atol=1e-4)


# "dynamic" takes the same path as "float16" (litert_options); the benchmark measures it.
@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_litert_is_smaller_and_still_classifies(run_dir, quantize):
    _needs("litert")
    report = kerastl.export(run_dir, "litert", quantize, calibration_images=24, **FAST)
    assert Path(report.path).name == f"model_{quantize}.tflite"
    assert report.bytes["ratio"] > (1.8 if quantize == "float16" else 3.0)
    assert report.agreement >= 0.8
    assert abs(report.exported_accuracy - report.keras_accuracy) <= 0.2
    if quantize == "int8":
        assert report.calibration["images"] == 24 and report.calibration["split"] == "train"
    else:
        assert report.calibration is None


def test_int8_calibration_is_drawn_reproducibly_from_the_training_split(run_dir, tmp_path):
    _needs("litert")
    first = deploy.calibration_indices(60, 24, seed=0)
    assert np.array_equal(first, deploy.calibration_indices(60, 24, seed=0))
    assert not np.array_equal(first, deploy.calibration_indices(60, 24, seed=1))
    again = kerastl.export(run_dir, "litert", "int8", calibration_images=24,
                           output=tmp_path / "again", verify=False, **FAST)
    published = deploy.default_output(run_dir, "litert", "int8") / "model_int8.tflite"
    if not published.exists():  # this test ran alone
        kerastl.export(run_dir, "litert", "int8", calibration_images=24, verify=False, **FAST)
    assert Path(again.path).read_bytes() == published.read_bytes()


def test_litert_export_strips_tensor_names_but_keeps_the_signature(run_dir, tmp_path):
    _needs("litert")
    from ai_edge_litert.interpreter import Interpreter

    # One conversion: the names kept, then a copy stripped as export() strips its files.
    kept = kerastl.export(run_dir, "litert", output=tmp_path / "kept", verify=False,
                          keep_names=True, **FAST)
    stripped = tmp_path / "stripped.tflite"
    shutil.copy(kept.path, stripped)
    saved = deploy.strip_tensor_names(stripped)
    assert kept.tensor_names == "kept" and saved > 0
    assert stripped.stat().st_size == kept.bytes["exported"] - saved
    images = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    outputs = []
    for path, named in ((kept.path, True), (stripped, False)):
        interpreter = Interpreter(model_path=str(path))
        assert any(t["name"] for t in interpreter.get_tensor_details()) == named
        outputs.append(interpreter.get_signature_runner("serving_default")(image=images))
    np.testing.assert_array_equal(*[next(iter(o.values())) for o in outputs])


def test_litert_exports_are_stripped_by_default(run_dir):
    _needs("litert")
    folder = deploy.default_output(run_dir, "litert", "none")
    if not (folder / "export_report.json").exists():  # this test ran alone
        kerastl.export(run_dir, "litert", verify=False, **FAST)
    assert json.loads((folder / "export_report.json").read_text())["tensor_names"] == "stripped"


# ------------------------------------------------------------------ bad input
def test_bad_inputs_are_refused_with_the_fix(run_dir, tmp_path):
    with pytest.raises(kerastl.ConfigError, match="does not exist"):
        kerastl.export(tmp_path / "nowhere")
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    with pytest.raises(kerastl.ConfigError, match="not a finished kerastl run.*--resume"):
        kerastl.export(tmp_path / "half")
    with pytest.raises(kerastl.ConfigError, match="format must be one of"):
        kerastl.export(run_dir, "tflite")
    with pytest.raises(kerastl.ConfigError, match="applies to format='litert'"):
        kerastl.export(run_dir, "onnx", "int8")
    with pytest.raises(kerastl.ConfigError, match="quantize must be one of"):
        kerastl.export(run_dir, "litert", "int4")


def test_int8_without_the_training_images_names_the_fix(run_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("exports", "checkpoints"))
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["data"] = str(tmp_path / "gone" / "train")
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(kerastl.DataError, match="calibration needs the run's training images.*"
                                                "--data.*dynamic or float16"):
        kerastl.export(moved, "litert", "int8", **FAST)
    assert not (moved / "exports").exists()


def test_a_missing_runtime_names_the_export_extra(run_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(kerastl.MissingDependencyError, match=r"pip install 'kerastl\[export\]'"):
        kerastl.export(run_dir, "onnx", **FAST)


# ------------------------------------------------------------------ the command
def test_cli_exports_never_replaces_silently_and_reports_errors_as_one_line(
        run_dir, tmp_path, capsys):
    target = tmp_path / "cli"
    args = [str(run_dir), "--format", "savedmodel", "--output", str(target), "--no-verify"]
    assert export_main(args) == 0
    assert sorted(p.name for p in target.iterdir()) == ["export_report.json", "labels.json",
                                                       "saved_model"]
    stamp = (target / "export_report.json").read_text()
    assert export_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (target / "export_report.json").read_text() == stamp
    assert export_main([*args, "--overwrite"]) == 0
    assert (target / "export_report.json").read_text() != stamp  # a new export, timed anew
    assert (target / "saved_model" / "saved_model.pb").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    assert export_main([str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_kerastl_export_is_the_function_and_python_m_kerastl_export_runs():
    import kerastl.export  # noqa: F401  (the module must not shadow the function)
    from kerastl.commands.cli import COMMANDS

    assert kerastl.export is deploy.export
    assert "export" in COMMANDS
    done = subprocess.run([sys.executable, "-m", "kerastl.export", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--quantize" in done.stdout

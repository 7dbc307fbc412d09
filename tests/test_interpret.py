"""Interpretation: predictions.csv, top losses, most-confused pairs, Grad-CAM, bad input."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import kerastl
from kerastl.commands.evaluate import evaluate_main
from kerastl.commands.predict import predict_main
from kerastl.data.samples import data_samples_dir, source_backbone
from kerastl.models.gradcam import cam_model, gradcam_heatmaps
from kerastl.outputs.interpretation import PREDICTIONS_HEADER
from kerastl.outputs.prediction_pass import Progress
from kerastl.recipes.pixel_blend import blend_pixels

from .conftest import source_model

SAMPLES = data_samples_dir() / "fashion"
SOURCE = source_backbone()
SIZE = 64  # MobileNetV3Small's last map is 2x2 here (1x1 at 32: no Grad-CAM)
TOP = 16


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("interpret") / "run"
    config = kerastl.RunConfig(
        data=str(SAMPLES / "train"), val_data=str(SAMPLES / "val"),
        backbone=SOURCE["backbone"], backbone_kwargs=SOURCE["backbone_kwargs"],
        weights=SOURCE["weights"], image_size=SIZE, mode="frozen", epochs=2,
        augment=[], verbose=0, seed=0, precision="float32", output=str(out))
    return kerastl.fit(config)


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    model = str(run.output_dir / "model.keras")
    assert evaluate_main([model, str(SAMPLES / "test"), "--output", str(out)]) == 0
    return out


def test_predictions_csv_agrees_with_plain_keras_on_the_same_files(run, evaluated):
    rows = _read_csv(evaluated / "predictions.csv")
    assert list(rows[0]) == list(PREDICTIONS_HEADER)
    on_disk = sorted(p.relative_to(SAMPLES / "test").as_posix()
                     for p in (SAMPLES / "test").rglob("*.png"))
    assert sorted(r["file"] for r in rows) == on_disk
    # Plain Keras, its own image loading, no kerastl code in the path.
    model = keras.models.load_model(run.output_dir / "model.keras")
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(
        SAMPLES / "test" / r["file"], target_size=(SIZE, SIZE), interpolation="bilinear"))
        for r in rows])
    names = json.loads((run.output_dir / "labels.json").read_text())["class_names"]
    keras_classes = [names[i] for i in np.argmax(model.predict(images, verbose=0), axis=1)]
    same = np.mean([k == r["predicted"] for k, r in zip(keras_classes, rows, strict=True)])
    assert same >= 0.99
    for r in rows:
        assert r["label"] == r["file"].split("/")[0]
        assert float(r["loss"]) == pytest.approx(-math.log(float(r["p_label"])), rel=1e-4,
                                                 abs=1e-5)
        assert (r["label"] == r["predicted"]) == (float(r["p_label"]) == float(r["p_predicted"]))


def test_top_losses_are_exactly_the_highest_loss_rows(evaluated):
    rows = _read_csv(evaluated / "predictions.csv")
    summary = json.loads((evaluated / "interpretation.json").read_text())
    top = summary["top_losses"]
    assert len(top) == TOP
    by_file = {r["file"]: float(r["loss"]) for r in rows}
    highest = sorted(by_file.values(), reverse=True)[:TOP]
    assert [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True)
    np.testing.assert_allclose([t["loss"] for t in top], highest, rtol=1e-5)
    np.testing.assert_allclose([by_file[t["file"]] for t in top], highest, rtol=1e-5)


def test_most_confused_counts_are_the_off_diagonal_cells_of_the_confusion_matrix(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    names, matrix = metrics["class_names"], np.asarray(metrics["confusion_matrix"])
    pairs = json.loads((evaluated / "interpretation.json").read_text())["most_confused"]
    expected = {(names[i], names[j]): int(matrix[i, j]) for i in range(len(names))
                for j in range(len(names)) if i != j and matrix[i, j]}
    assert {(p["label"], p["predicted"]): p["count"] for p in pairs} == expected
    assert [p["count"] for p in pairs] == sorted((p["count"] for p in pairs), reverse=True)
    assert sum(expected.values()) == round((1 - metrics["accuracy"]) * metrics["n_examples"])


def test_gradcam_npz_holds_the_top_losses_at_input_size(evaluated):
    summary = json.loads((evaluated / "interpretation.json").read_text())
    with np.load(evaluated / "gradcam.npz") as saved:
        files, heatmaps = list(saved["files"]), saved["heatmaps"]
    assert files == [t["file"] for t in summary["top_losses"]]
    assert heatmaps.shape == (TOP, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and heatmaps.max() == pytest.approx(1.0)
    assert summary["gradcam"]["layer"] == "backbone"
    assert summary["gradcam"]["feature_map"][:2] == [2, 2]
    for name in ("top_losses.png", "report.html", "confusion_matrix.png"):
        assert (evaluated / name).stat().st_size > 0


def test_the_evaluation_report_shows_the_run_behind_the_model_and_its_own_timings(
        run, evaluated):
    page = (evaluated / "report.html").read_text()
    recorded = json.loads((run.output_dir / "run.json").read_text())["unfreeze_plan"]
    assert recorded.startswith("Unfreeze plan: mode=frozen")
    assert "<h2>Unfreeze plan</h2>" in page and html.escape(recorded) in page
    assert "<h2>The run that trained this model</h2>" in page
    assert html.escape(str(run.output_dir.resolve())) in page
    assert "<h2>Configuration</h2>" in page and "mode: frozen" in page
    seconds = json.loads((evaluated / "interpretation.json").read_text())["seconds"]
    assert set(seconds) == {"prediction pass", "Grad-CAM pass"}
    assert all(value > 0 for value in seconds.values())
    assert "<td>prediction pass</td>" in page and "<td>Grad-CAM pass</td>" in page
    assert f"<td>{keras.__version__}</td>" in page


def test_a_training_run_writes_the_report_and_its_interpretation(run):
    out = run.output_dir
    rows = _read_csv(out / "predictions.csv")
    # The run is evaluated on its validation folder (no test split): one row per image.
    assert sorted(r["file"] for r in rows) == sorted(
        p.relative_to(SAMPLES / "val").as_posix() for p in (SAMPLES / "val").rglob("*.png"))
    assert (out / "interpretation.json").is_file() and (out / "top_losses.png").is_file()
    page = (out / "report.html").read_text()
    assert "Unfreeze plan" in page and "Most-confused pairs" in page and "Curves" in page


def test_api_object_matches_the_files_and_computes_gradcam_for_every_image(run, evaluated):
    interp = kerastl.interpret(run.output_dir, SAMPLES / "test")
    rows = _read_csv(evaluated / "predictions.csv")
    assert interp.files == [r["file"] for r in rows]
    np.testing.assert_allclose(interp.losses, [float(r["loss"]) for r in rows], rtol=1e-4,
                               atol=1e-5)
    assert interp.most_confused(min_count=2) == [p for p in interp.most_confused() if p[2] >= 2]
    heatmaps = interp.gradcam()
    assert heatmaps.shape == (len(rows), SIZE, SIZE)
    figure = interp.plot_top_losses(4)
    assert len(figure.axes) == 4


def test_gradcam_all_from_the_cli_writes_one_map_per_file(run, tmp_path):
    folder = SAMPLES / "test" / "bag"
    data = tmp_path / "data"
    (data / "bag").mkdir(parents=True)
    for path in sorted(folder.iterdir())[:5]:
        (data / "bag" / path.name).write_bytes(path.read_bytes())
    for name in run.class_names:  # every class of the model, one image each
        if name != "bag":
            (data / name).mkdir()
            first = sorted((SAMPLES / "test" / name).iterdir())[0]
            (data / name / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "out"
    assert evaluate_main([str(run.output_dir / "model.keras"), str(data), "--output", str(out),
                          "--gradcam", "all", "--top-losses", "3"]) == 0
    with np.load(out / "gradcam.npz") as saved:
        assert sorted(saved["files"]) == sorted(r["file"] for r in
                                                _read_csv(out / "predictions.csv"))
        assert saved["heatmaps"].shape == (9, SIZE, SIZE)
    assert len(json.loads((out / "interpretation.json").read_text())["top_losses"]) == 3


def test_predict_into_a_folder_writes_predictions_without_label_columns(run, tmp_path):
    sandal = SAMPLES / "test" / "sandal"
    assert predict_main([str(run.output_dir / "model.keras"), str(sandal),
                         "--output", str(tmp_path / "out")]) == 0
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == ["file", "predicted", "p_predicted"]
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in sandal.iterdir())


def _model_file(tmp_path: Path, size: int, labels: bool = True) -> Path:
    model = kerastl.build_model("MobileNetV2", 5, input_shape=size, weights=None, head="avg",
                                dense_units=(), backbone_kwargs={"alpha": 0.35})
    path = tmp_path / "model" / "model.keras"
    path.parent.mkdir()
    model.save(path)
    if labels:
        names = sorted(p.name for p in (SAMPLES / "test").iterdir())
        (path.parent / "labels.json").write_text(json.dumps({"class_names": names,
                                                             "task": "multiclass"}))
    return path


def test_a_backbone_without_a_spatial_map_is_a_note_not_a_failure(tmp_path):
    path = _model_file(tmp_path, 32)
    assert evaluate_main([str(path), str(SAMPLES / "test"), "--output", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "interpretation.json").read_text())
    assert "no spatial map" in summary["gradcam"]["none"]
    assert not (tmp_path / "o" / "gradcam.npz").exists()
    assert (tmp_path / "o" / "top_losses.png").is_file()
    with pytest.raises(kerastl.ConfigError, match="--gradcam-layer"):
        cam_model(kerastl.load_model(path))
    assert cam_model(kerastl.load_model(path), "block_6_expand_relu").map_shape[:2] == (4, 4)


@pytest.mark.parametrize("case", ["empty", "other classes", "no such layer"])
def test_bad_input_ends_with_one_line_and_exit_code_2(tmp_path, capsys, case):
    path = _model_file(tmp_path, 32)
    data, extra = tmp_path / "data", []
    data.mkdir()
    if case == "other classes":
        (data / "cats").mkdir()
        Image.new("RGB", (8, 8)).save(data / "cats" / "1.png")
    if case == "no such layer":
        data, extra = SAMPLES / "test", ["--gradcam-layer", "nope"]
    code = evaluate_main([str(path), str(data), "--output", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    if case == "no such layer":  # a Grad-CAM problem is a note: evaluation still succeeds
        assert code == 0
        summary = json.loads((tmp_path / "o" / "interpretation.json").read_text())
        assert "nope" in summary["gradcam"]["none"]
        return
    assert code == 2 and err.startswith("kerastl: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_a_plain_keras_model_without_labels_json_is_interpreted_with_folder_order(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    path = tmp_path / "plain.keras"
    model.save(path)
    out = tmp_path / "o"
    assert evaluate_main([str(path), str(SAMPLES / "test"), "--output", str(out)]) == 0
    rows = _read_csv(out / "predictions.csv")
    assert {r["label"] for r in rows} == {p.name for p in (SAMPLES / "test").iterdir()}
    summary = json.loads((out / "interpretation.json").read_text())
    assert any("labels.json" in note for note in summary["notes"])
    assert summary["gradcam"]["layer"] == "conv"
    page = (out / "report.html").read_text()
    assert "a plain Keras model (no kerastl run.json" in page
    assert "Unfreeze plan" not in page and "<h2>Configuration</h2>" not in page
    assert "<td>prediction pass</td>" in page and "<td>Grad-CAM pass</td>" in page
    assert predict_main([str(path), str(SAMPLES / "test" / "bag"), "--output",
                         str(tmp_path / "p")]) == 0
    assert {r["predicted"] for r in _read_csv(tmp_path / "p" / "predictions.csv")} <= set("01234")
    # Arrays without names: class ids are the names.
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3)).astype("uint8")
    interp = kerastl.interpret(path, (images, [0, 1, 2, 3, 4, 0]))
    assert interp.class_names == ["0", "1", "2", "3", "4"]
    assert interp.gradcam().shape == (6, 32, 32)


def test_gradcam_of_a_blended_model_explains_the_network_logits():
    model = kerastl.build_model("MobileNetV2", 3, input_shape=64, weights=None, head="avg",
                                dense_units=(), backbone_kwargs={"alpha": 0.35})
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (9, 64, 64, 3)).astype("float32")
    data = kerastl.from_arrays(images.astype("uint8"), [0, 1, 2] * 3)
    blended, _ = blend_pixels(model, data, image_size=64, task="multiclass")
    classes = np.argmax(blended.predict(images, verbose=0), axis=1)
    assert "network" in cam_model(blended).explains
    np.testing.assert_allclose(gradcam_heatmaps(blended, images, classes),
                               gradcam_heatmaps(model, images, classes), atol=1e-5)


def test_gradcam_of_a_model_saved_under_mixed_precision_matches_float32(tmp_path):
    # The shipped pretrained base: a random one with BatchNorm in inference mode has
    # ~1e-12 features, which float16 flushes to zero.
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = source_model(3, size=64)
    model.save(tmp_path / "m.keras")
    keras.mixed_precision.set_global_policy("float32")
    loaded = kerastl.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("backbone").layers[-1].compute_dtype == "float16"
    reference = source_model(3, size=64)
    reference.set_weights(loaded.get_weights())
    images = np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 3))
    classes = np.argmax(reference.predict(images, verbose=0), axis=1)
    heatmaps = gradcam_heatmaps(loaded, images, classes)
    assert heatmaps.dtype == np.float32 and np.isfinite(heatmaps).all()
    assert np.allclose(heatmaps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(heatmaps, gradcam_heatmaps(reference, images, classes),
                               atol=0.05)


def test_progress_is_one_plain_line_when_stdout_is_not_a_terminal():
    stream = io.StringIO()
    bar = Progress(10_000, "predict", stream=stream)
    for _ in range(100):
        bar.update(100)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.count("\n") == 1 and text.startswith("predict: 10000 images")


# ---------------------------------------------------------------- localisation
OBJECT = 8
COLOURS = {"red": (255, 40, 40), "green": (40, 255, 40), "blue": (40, 40, 255)}


def _localisation_set(root: Path, per_class: int, seed: int, side: int) -> dict:
    """A coloured square at a random place on noise; the class is the square's colour."""
    rng, boxes = np.random.default_rng(seed), {}
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(40, 90, (side, side, 3)).astype(np.uint8)
            row, col = rng.integers(0, side - OBJECT + 1, 2)
            image[row:row + OBJECT, col:col + OBJECT] = colour
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
            boxes[f"{name}/{i:03d}.png"] = (int(row), int(col))
    return boxes


@pytest.mark.slow
def test_gradcam_of_a_model_trained_from_scratch_with_the_cli_finds_the_object(tmp_path):
    """The issue's localisation goal: peak within one feature-map cell of the object's
    centre cell for >= 70 % of correctly classified test images.

    Setup: this set (450 training images), DenseNet121 from scratch with the CLI's
    defaults at 32x32, 15 epochs; Grad-CAM of conv3_block12_concat (4x4, 8 px cells; a
    peak placed by chance is within one cell of the centre cell for ~0.39).
    MEASURED (share of correct images; training set seed 2s, test set 2s+1, --seed s,
    s = 0, 1, 2; every run 100 % accurate): 0.808, 0.942, 0.800 (pool3_relu, the same
    map after BatchNorm and ReLU: 0.75, 0.908, 0.80; 8 epochs: 0.775, 0.967, 0.708).
    MobileNetV2 a=0.35 does not localise here, whatever was tried (block_5_add 4x4:
    0.696, 0.551, 0.752; 40 epochs and 900 images 0.658; block_6_expand_relu 0.705,
    0.525, 0.769; with or without augmentation; classes given by the object's shape
    instead of its colour 0.525-0.708; at 64x64 0.50); nor do ResNet50 (conv2_block3_out
    8x8: 0.750, 0.492, 0.625) or ConvNeXtTiny (stage 1, 4x4: 0.267): by their stride-8
    layers they carry "this colour is somewhere" across the whole 32 px image, so their
    class maps are near uniform. DenseNet's concatenated features keep each block's
    local evidence to the map Grad-CAM reads. A two-layer CNN localises every image.
    """
    _localisation_set(tmp_path / "train", 150, seed=0, side=32)
    boxes = _localisation_set(tmp_path / "test", 40, seed=1, side=32)
    run_dir, out = tmp_path / "run", tmp_path / "evaluation"
    train = [sys.executable, "-m", "kerastl.train", "--data", str(tmp_path / "train"),
             "--mode", "scratch", "--weights", "none", "--backbone", "DenseNet121",
             "--image-size", "32", "--epochs", "15", "--head", "avg", "--jit-compile", "off",
             "--seed", "0", "--output", str(run_dir), "--verbose", "0"]
    subprocess.run(train, check=True, capture_output=True)
    layer = "conv3_block12_concat"
    subprocess.run([sys.executable, "-m", "kerastl.evaluate", str(run_dir / "model.keras"),
                    str(tmp_path / "test"), "--output", str(out), "--gradcam", "all",
                    "--gradcam-layer", layer], check=True, capture_output=True)
    rows = {r["file"]: r for r in _read_csv(out / "predictions.csv")}
    assert np.mean([r["label"] == r["predicted"] for r in rows.values()]) >= 0.9
    summary = json.loads((out / "interpretation.json").read_text())
    cells = summary["gradcam"]["feature_map"][0]
    assert summary["gradcam"]["layer"] == layer and cells == 4
    cell = 32 // cells
    with np.load(out / "gradcam.npz") as saved:
        files, heatmaps = list(saved["files"]), saved["heatmaps"]
    assert sorted(files) == sorted(rows) and heatmaps.shape == (len(rows), 32, 32)
    hits = []
    for file, heatmap in zip(files, heatmaps, strict=True):
        if rows[file]["label"] != rows[file]["predicted"]:
            continue
        pooled = heatmap.reshape(cells, cell, cells, cell).mean(axis=(1, 3))
        peak = np.unravel_index(np.argmax(pooled), pooled.shape)
        centre = [(corner + OBJECT / 2) // cell for corner in boxes[file]]
        hits.append(all(abs(p - c) <= 1 for p, c in zip(peak, centre, strict=True)))
    assert np.mean(hits) >= 0.7, f"peak on the object for {np.mean(hits):.3f} of the images"


def test_multilabel_loss_is_the_summed_binary_cross_entropy_of_the_label_set():
    from kerastl.outputs.interpretation import Interpretation

    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    probs = np.array([[0.9, 0.2, 0.6], [0.3, 0.4, 0.1], [0.8, 0.7, 0.9]])
    data = kerastl.from_arrays(np.zeros((3, 8, 8), "uint8"), labels,
                               class_names=["a", "b", "c"])
    interp = Interpretation(None, data, ["a", "b", "c"], "multilabel", probs, ["x", "y", "z"])
    expected = 3 * np.asarray(keras.losses.binary_crossentropy(
        labels.astype("float32"), probs.astype("float32")))
    np.testing.assert_allclose(interp.losses, expected, rtol=1e-5)
    rows = interp.rows()
    assert [r["label"] for r in rows] == ["a;c", "b", "a;b"]
    assert [r["predicted"] for r in rows] == ["a;c", "", "a;b;c"]
    assert rows[0]["p_label"] == pytest.approx(0.9 * 0.8 * 0.6)
    assert interp.most_confused() == [("a;b", "a;b;c", 1), ("b", "", 1)]


def test_binary_probabilities_of_one_sigmoid_give_both_classes():
    from kerastl.outputs.interpretation import Interpretation

    data = kerastl.from_arrays(np.zeros((3, 8, 8), "uint8"), [0, 1, 1],
                               class_names=["cat", "dog"])
    interp = Interpretation(None, data, ["cat", "dog"], "binary",
                            np.array([[0.2], [0.9], [0.4]]), ["a", "b", "c"])
    np.testing.assert_allclose(interp.losses, -np.log([0.8, 0.9, 0.4]))
    assert [r["predicted"] for r in interp.rows()] == ["cat", "dog", "cat"]
    assert interp.top_losses(1)[0]["file"] == "c"
    assert interp.most_confused() == [("dog", "cat", 1)]

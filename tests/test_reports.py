"""Tests for kerastl.outputs.reports: metrics against scikit-learn, files, plots, history,
summary."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from kerastl.core.errors import ConfigError, DataError
from kerastl.outputs import history, reports
from kerastl.outputs.history import plot_curves, read_history_csv, write_history_csv
from kerastl.outputs.reports import (
    atomic_write_json,
    atomic_write_text,
    classification_metrics,
    write_evaluation,
)
from kerastl.outputs.run_dir import RunDir
from kerastl.outputs.summary import summary_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Two classes, known confusion: true "cat" x3 (2 right, 1 called "dog"), true "dog" x3 (all right).
Y_TRUE = np.array([0, 0, 0, 1, 1, 1])
Y_PROB = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9], [0.45, 0.55]])
NAMES = ["cat", "dog"]


def _rows():
    return [
        {"epoch": 1, "phase": "frozen", "lr": 1e-3, "loss": 0.9, "accuracy": 0.5,
         "val_loss": 1.0, "val_accuracy": 0.4},
        {"epoch": 2, "phase": "frozen", "lr": 1e-3, "loss": 0.7, "accuracy": 0.6,
         "val_loss": 0.8, "val_accuracy": 0.55},
        {"epoch": 3, "phase": "finetune", "lr": 1e-5, "loss": 0.1 + 0.2, "accuracy": 0.8,
         "val_loss": 0.6, "val_accuracy": 0.7, "auc": 0.91},
    ]


def _assert_png(path, min_side=200, max_side=4000):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        width, height = image.size
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)


# ------------------------------------------------------------------------- metrics


def test_multiclass_metrics_match_hand_counts_and_sklearn():
    m = classification_metrics(Y_TRUE, Y_PROB, NAMES)

    assert m["confusion_matrix"] == [[2, 1], [0, 3]]
    assert m["n_examples"] == 6
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    precision, recall, f1, support = precision_recall_fscore_support(Y_TRUE, Y_PROB.argmax(1))
    assert [m["per_class"][n]["precision"] for n in NAMES] == pytest.approx(precision)
    assert [m["per_class"][n]["recall"] for n in NAMES] == pytest.approx(recall)
    assert [m["per_class"][n]["f1"] for n in NAMES] == pytest.approx(f1)
    assert [m["per_class"][n]["support"] for n in NAMES] == support.tolist()
    assert m["macro_avg"]["f1"] == pytest.approx(f1.mean())
    json.dumps(m, allow_nan=False)  # the dict is JSON-ready, no NumPy scalars


def test_one_hot_labels_give_the_same_metrics_as_integer_labels():
    one_hot = np.eye(2)[Y_TRUE]
    assert classification_metrics(one_hot, Y_PROB, NAMES) == classification_metrics(
        Y_TRUE, Y_PROB, NAMES
    )


def test_class_never_predicted_scores_zero_without_warning():
    # filterwarnings=error turns sklearn's UndefinedMetricWarning into a failure.
    probs = np.array([[0.9, 0.05, 0.05]] * 4)
    m = classification_metrics([0, 1, 2, 2], probs, ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [2, 0, 0]]


def test_binary_thresholds_one_sigmoid_output():
    y_true = np.array([[0], [0], [1], [1]])
    y_prob = np.array([[0.2], [0.6], [0.65], [0.9]])

    default = classification_metrics(y_true, y_prob, ["neg", "pos"], task="binary")
    strict = classification_metrics(y_true, y_prob, ["neg", "pos"], task="binary", threshold=0.7)

    assert default["confusion_matrix"] == [[1, 1], [0, 2]]
    assert strict["confusion_matrix"] == [[2, 0], [1, 1]]
    assert strict["threshold"] == 0.7
    assert default["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)


def test_multilabel_per_label_metrics_and_subset_accuracy():
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    y_prob = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.6], [0.6, 0.3, 0.1], [0.1, 0.2, 0.9]])

    m = classification_metrics(y_true, y_prob, ["sky", "tree", "car"], task="multilabel")

    assert m["accuracy"] == pytest.approx(2 / 4)  # rows 0 and 3 exactly right
    assert m["confusion_matrix"] == [  # [[tn, fp], [fn, tp]] per label
        [[2, 0], [0, 2]],
        [[2, 0], [1, 1]],
        [[1, 1], [0, 2]],
    ]
    assert m["per_class"]["tree"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["car"]["precision"] == pytest.approx(2 / 3)
    assert {"micro_avg", "macro_avg", "weighted_avg", "samples_avg"} <= set(m)


@pytest.mark.parametrize(
    ("kwargs", "error", "quoted"),
    [
        ({"y_prob": Y_PROB[:5]}, DataError, "(5, 2)"),
        ({"y_prob": np.where(Y_PROB > 0.85, np.nan, Y_PROB)}, DataError, "NaN"),
        ({"y_true": [0, 0, 0, 1, 1, 2]}, DataError, "labels 0..1"),
        ({"y_true": ["cat"] * 6}, DataError, "'cat'"),
        ({"class_names": ["cat", "dog", "cow"]}, DataError, "(N, 3)"),
        ({"task": "regression"}, ConfigError, "'regression'"),
        ({"task": "binary"}, DataError, "task='multiclass'"),
        ({"threshold": 1.5}, ConfigError, "1.5"),
    ],
)
def test_bad_inputs_raise_and_quote_what_was_received(kwargs, error, quoted):
    args = {"y_true": Y_TRUE, "y_prob": Y_PROB, "class_names": NAMES, **kwargs}
    task = args.pop("task", "multiclass")
    threshold = args.pop("threshold", 0.5)
    with pytest.raises(error) as info:
        classification_metrics(**args, task=task, threshold=threshold)
    assert quoted in str(info.value)


# ------------------------------------------------------------------------- evaluation files


def test_write_evaluation_writes_metrics_report_and_confusion_png(tmp_path):
    m = write_evaluation(tmp_path / "eval", Y_TRUE, Y_PROB, NAMES, loss=np.float32(0.25))

    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == [
        "classification_report.txt",
        "confusion_matrix.png",
        "metrics.json",
    ]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == m
    assert saved["loss"] == pytest.approx(0.25)
    assert saved["per_class"]["dog"]["precision"] == pytest.approx(0.75)
    report = (out / "classification_report.txt").read_text()
    assert "cat" in report and "dog" in report and "0.7500" in report
    _assert_png(out / "confusion_matrix.png")


def test_write_evaluation_prefix_and_multilabel(tmp_path):
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_prob = np.array([[0.8, 0.3], [0.1, 0.9], [0.7, 0.2]])

    m = write_evaluation(tmp_path, y_true, y_prob, ["a", "b"], task="multilabel", prefix="test_")

    assert "loss" not in m
    assert {p.name for p in tmp_path.iterdir()} == {
        "test_metrics.json",
        "test_classification_report.txt",
        "test_confusion_matrix.png",
    }
    _assert_png(tmp_path / "test_confusion_matrix.png")


def test_plots_leave_the_notebook_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a backend a notebook chose
    try:
        write_evaluation(tmp_path, Y_TRUE, Y_PROB, NAMES)
        plot_curves(_rows(), tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    _assert_png(tmp_path / "curves.png")


# ------------------------------------------------------------------------- history and curves


def test_history_round_trips_through_csv_with_stable_columns(tmp_path):
    rows = _rows()
    path = write_history_csv(rows, tmp_path / "history.csv")

    header = path.read_text().splitlines()[0]
    assert header == "epoch,phase,lr,loss,accuracy,val_loss,val_accuracy,auc"
    back = read_history_csv(path)
    expected = [{**row, "auc": row.get("auc")} for row in rows]
    assert back == expected  # floats exact (0.1 + 0.2 included), ints stay ints
    assert isinstance(back[0]["epoch"], int) and back[0]["phase"] == "frozen"


def test_history_csv_columns_follow_first_seen_order_and_accept_numpy(tmp_path):
    rows = [{"val_loss": np.float32(0.5), "loss": np.float64(0.25), "top5": 1.0}]
    path = write_history_csv(rows, tmp_path / "h.csv")
    assert path.read_text() == "loss,val_loss,top5\n0.25,0.5,1.0\n"


def test_plot_curves_from_rows_csv_and_keras_history(tmp_path):
    rows = _rows()
    csv_path = write_history_csv(rows, tmp_path / "history.csv")
    keras_history = {"loss": [0.9, 0.5], "binary_accuracy": [0.6, 0.7], "val_loss": [1.0, 0.6]}

    for name, given in [("rows", rows), ("csv", csv_path), ("keras", keras_history)]:
        path = plot_curves(given, tmp_path / f"{name}.png", phase_boundaries=[(1, "frozen")])
        _assert_png(path)


def test_phase_boundaries_are_drawn_between_phases_and_labelled():
    boundaries = history._check_boundaries([(1, "frozen"), (3, "finetune")])
    fig = history._curves_figure(_rows(), boundaries)

    for ax in fig.axes:
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"
                  and line.get_xdata()[0] == line.get_xdata()[1]]
        assert [line.get_xdata()[0] for line in dashed] == [0.5, 2.5]
        labels = [text.get_text().strip() for text in ax.texts]
        assert labels == ["frozen", "finetune"]


def test_phase_boundaries_default_to_where_the_phase_column_changes():
    assert history._phase_starts(_rows()) == [(1.0, "frozen"), (3.0, "finetune")]
    assert history._phase_starts([{"loss": 1.0}, {"loss": 0.5}]) == []


def test_plot_curves_rejects_bad_boundaries_and_empty_history(tmp_path):
    with pytest.raises(ConfigError, match="'finetune'"):
        plot_curves(_rows(), tmp_path / "c.png", phase_boundaries=["finetune"])
    with pytest.raises(DataError, match="0 rows"):
        plot_curves([], tmp_path / "c.png", phase_boundaries=[])
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_only_the_file(tmp_path):
    atomic_write_json(tmp_path / "sub" / "m.json", {"acc": np.float32(0.5), "cm": np.eye(2)})
    assert os.listdir(tmp_path / "sub") == ["m.json"]
    assert json.loads((tmp_path / "sub" / "m.json").read_text()) == {
        "acc": 0.5,
        "cm": [[1.0, 0.0], [0.0, 1.0]],
    }


def test_serialization_error_keeps_the_old_file(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", {"acc": 0.5})
    with pytest.raises(TypeError, match="object"):
        atomic_write_json(path, {"acc": 0.9, "model": object()})
    assert json.loads(path.read_text()) == {"acc": 0.5}
    assert os.listdir(tmp_path) == ["m.json"]


def test_crash_mid_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "report.txt", "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reports.os, "fsync", disk_full)  # fails after the bytes are written
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new " * 1000)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_write_respects_umask_like_open(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------- summary


def test_summary_text_shows_the_run_on_one_screen():
    text = summary_text(
        {
            "backbone": "MobileNetV2",
            "mode": "finetune",
            "phases": [{"name": "frozen", "epochs": 3}, {"name": "finetune", "epochs": 5}],
            "epochs": 8,
            "examples": {"train": 1200, "val": 200, "test": 200},
            "best_val_accuracy": 0.9,
            "best_epoch": 6,
            "test_accuracy": 0.8512,
            "seconds": 3723.4,
            "trainable_params": 12345,
            "total_params": 2257984,
            "output_dir": "runs/x",
        }
    )
    lines = text.splitlines()
    assert len(lines) <= 24
    for expected in [
        "MobileNetV2",
        "finetune (frozen 3 ep -> finetune 5 ep)",
        "train 1,200, val 200, test 200",
        "90.00% (epoch 6)",
        "85.12%",
        "1h 02m 03s",
        "12,345 of 2,257,984",
        "runs/x",
    ]:
        assert expected in text


def test_summary_text_says_when_test_numbers_come_from_validation():
    text = summary_text({"test_accuracy": 0.5, "evaluated_on": "validation"})
    assert "50.00% (on validation split)" in text


def test_summary_text_skips_missing_facts():
    text = summary_text({"backbone": "ResNet50", "seconds": 42.0})
    assert text.splitlines()[1:] == ["  backbone   ResNet50", "  time       42.0 s"]
    with pytest.raises(ConfigError, match="list"):
        summary_text(["ResNet50"])


# ------------------------------------------------------------------ the run folder
def test_a_run_folder_is_read_through_one_contract(tmp_path):
    run = RunDir.of(tmp_path / "model.keras")
    assert run.path == tmp_path and run.missing() == ["model.keras", "labels.json",
                                                      "config.yaml"]
    with pytest.raises(DataError, match="No labels.json in .*Copy it alongside"):
        run.read_labels()
    assert run.read_labels(required=False) is None and run.read_facts() == {}
    run.write_labels(["cat", "dog"], "multiclass", 32, loss={"label_smoothing": 0.1})
    assert run.read_labels() == {"class_names": ["cat", "dog"], "task": "multiclass",
                                 "image_size": 32, "loss": {"label_smoothing": 0.1}}
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError,
                       match="model.keras, config.yaml missing.*--resume.*Export needs"):
        run.check_finished("Export")

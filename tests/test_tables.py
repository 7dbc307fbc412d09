"""Labels in a table (CSV, DataFrame, file list) load like a class folder."""

from __future__ import annotations

import numpy as np
import pytest

import kerastl
from kerastl.core.errors import DataError
from kerastl.data.folders import from_folder
from kerastl.data.splits import load_splits
from kerastl.data.tables import from_csv, from_dataframe, from_files
from tests.test_doctor import make_bad_files, save_rgb


@pytest.fixture
def images(tmp_path):
    """images/cats/{0,1,2}.png and images/dogs/{0,1}.png, and a CSV listing them."""
    root = tmp_path / "images"
    for i in range(3):
        save_rgb(root / "cats" / f"{i}.png", seed=i)
    for i in range(2):
        save_rgb(root / "dogs" / f"{i}.png", seed=10 + i)
    rows = [f"images/cats/{i}.png,cat" for i in range(3)] + [
        f"images/dogs/{i}.png,dog" for i in range(2)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return tmp_path


def _pixels(data, size=16):
    return np.concatenate([x.numpy() for x, _ in data.batches(size, 2)])


def test_a_csv_gives_the_images_and_labels_the_folder_gives(images):
    table = from_csv(images / "labels.csv")
    folder = from_folder(images / "images")
    assert table.class_names == ["cat", "dog"] and table.labels.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(_pixels(table), _pixels(folder))


def test_paths_are_relative_to_the_csv_not_the_working_directory(images, monkeypatch,
                                                                 tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert len(from_csv(images / "labels.csv")) == 5


def test_multi_label_rows_become_multi_hot(images):
    (images / "multi.csv").write_text(
        "path,label\nimages/cats/0.png,cat;outdoor\nimages/dogs/0.png,dog\n"
        "images/dogs/1.png,dog;outdoor\n")
    data = from_csv(images / "multi.csv")
    assert data.multilabel and data.class_names == ["cat", "dog", "outdoor"]
    assert data.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]


@pytest.mark.parametrize("text, match", [
    ("file,label\na.png,cat\n", r"labels.csv has no 'path' column; found columns \['file'"),
    ("path,label\nimages/cats/0.png,cat\nimages/cats/9.png,cat\n",
     r"labels.csv line 3: file not found: .*9.png"),
    ("path,label\nimages/cats/0.png,cat\nimages/cats/1.png,\n",
     r"labels.csv line 3: empty 'label'"),
])
def test_bad_tables_are_one_line_errors_naming_the_row(images, text, match):
    (images / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=match) as error:
        from_csv(images / "labels.csv")
    assert "\n" not in str(error.value)


def test_an_unknown_label_in_validation_names_its_row(images):
    (images / "val.csv").write_text("path,label\nimages/cats/0.png,cat\n"
                                    "images/dogs/0.png,zebra\n")
    with pytest.raises(DataError, match=r"val.csv line 3: label 'zebra' is not one of the "
                                        r"training classes \['cat', 'dog'\]"):
        load_splits(images / "labels.csv", val_dir=images / "val.csv")


def test_bad_files_in_a_table_are_checked_and_skipped_like_a_folders(images):
    bad = make_bad_files(images / "images" / "cats")
    rows = "\n".join(f"{path},cat" for path in bad)
    with open(images / "labels.csv", "a") as handle:
        handle.write(rows + "\n")
    with pytest.raises(DataError, match="on_bad_file='skip'"):
        from_csv(images / "labels.csv")
    data = from_csv(images / "labels.csv", on_bad_file="skip", image_size=16)
    assert len(data) == 5 and data.skipped.keys() == bad.keys()
    assert data._pixels[16][0].shape[0] == 5 + len(bad)  # decoded once, by the check


def test_load_splits_reads_csvs_for_every_split(images):
    (images / "test.csv").write_text("path,label\nimages/dogs/1.png,dog\n")
    splits = load_splits(images / "labels.csv", test_dir=images / "test.csv", val_split=0)
    assert len(splits.train) == 5 and splits.test.labels.tolist() == [1]


class _Frame:
    """The part of a pandas DataFrame kerastl reads: columns, column access, index."""

    def __init__(self, columns: dict, index: list):
        self._columns, self.columns, self.index = columns, list(columns), index

    def __getitem__(self, name):
        return self._columns[name]


def test_a_dataframe_and_a_file_list_give_the_same_data(images):
    paths = [f"images/cats/{i}.png" for i in range(3)] + [f"images/dogs/{i}.png"
                                                          for i in range(2)]
    labels = ["cat"] * 3 + ["dog"] * 2
    frame = from_dataframe(_Frame({"path": paths, "label": labels}, list(range(5))),
                           root=images)
    listed = from_files([images / p for p in paths], labels)
    assert frame.labels.tolist() == listed.labels.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(_pixels(frame), _pixels(listed))
    with pytest.raises(DataError, match=r"DataFrame row 'r2': file not found"):
        from_dataframe(_Frame({"path": ["images/cats/0.png", "nope.png"],
                               "label": ["cat", "cat"]}, ["r1", "r2"]), root=images)


def test_a_csv_trains_like_a_folder(images, tmp_path):
    config = kerastl.RunConfig(data=str(images / "labels.csv"), backbone="MobileNetV2",
                               backbone_kwargs={"alpha": 0.35}, weights="none",
                               mode="frozen", image_size=32, epochs=1, batch_size=2,
                               val_split=0, output=str(tmp_path / "run"), verbose=0)
    result = kerastl.fit(config)
    assert result.metrics["accuracy"] >= 0 and (tmp_path / "run" / "model.keras").exists()


def test_the_doctor_reads_a_csv_and_names_its_unusable_rows(images, capsys):
    import json

    from kerastl.commands.doctor import doctor_main

    bad = make_bad_files(images / "images" / "cats")
    with open(images / "labels.csv", "a") as table:
        table.write("images/cats/missing.png,cat\n")  # line 7
        table.writelines(f"{path},cat\n" for path in bad)
    assert doctor_main([str(images / "labels.csv"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["class_counts"] == {"cat": 3, "dog": 2}
    reasons = report["bad_files"]
    missing = str(images / "images" / "cats" / "missing.png")
    assert "file not found" in reasons[missing] and "labels.csv line 7" in reasons[missing]
    for path, reason in bad.items():
        assert reason in reasons[path]

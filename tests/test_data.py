"""The data layer: folders and arrays become reproducible batches of RGB pixels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kerastl
from kerastl.core.errors import ConfigError, DataError
from kerastl.data.arrays import from_arrays
from kerastl.data.augmentation import augmentation
from kerastl.data.folders import from_folder
from kerastl.data.image_data import ImageData
from kerastl.data.splits import load_splits, train_val_split
from tests.test_doctor import (
    cmyk_jpeg,
    exif_rotated_jpeg,
    make_bad_files,
    noise,
    rgba_png,
    save_rgb,
    sixteen_bit_png,
)


@pytest.fixture
def folder(tmp_path):
    """data/ with classes a (3 images) and b (2 images)."""
    root = tmp_path / "data"
    for i in range(3):
        save_rgb(root / "a" / f"{i}.jpg", seed=i, quality=95)
    for i in range(2):
        save_rgb(root / "b" / f"{i}.PNG", seed=10 + i)  # extensions are case-insensitive
    return root


def indexed_images(count: int) -> np.ndarray:
    """Image i is filled with the value i, so batches reveal the order."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 8, 8, 3))


def order_of(dataset) -> list[int]:
    return [int(v) for images, _ in dataset for v in images[:, 0, 0, 0].numpy()]


# ---------------------------------------------------------------- folders


def test_folder_classes_labels_and_hidden_entries(folder):
    save_rgb(folder / ".ipynb_checkpoints" / "a-checkpoint.jpg")
    save_rgb(folder / "a" / ".ipynb_checkpoints" / "0-checkpoint.jpg")
    (folder / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    data = from_folder(folder)
    assert data.class_names == ["a", "b"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert not any(".ipynb_checkpoints" in f or ".DS_Store" in f for f in data.files)


def test_bad_files_raise_naming_each_one(folder):
    bad = make_bad_files(folder / "a")
    with pytest.raises(DataError, match="on_bad_file='skip'") as error:
        from_folder(folder)
    for path in bad:
        assert path in str(error.value)


def test_bad_files_are_skipped_and_recorded(folder):
    bad = make_bad_files(folder / "b")
    data = from_folder(folder, on_bad_file="skip")
    assert len(data) == 5
    assert data.skipped.keys() == bad.keys()
    assert not set(data.files) & set(bad)
    images = np.concatenate([x.numpy() for x, _ in data.batches(16, 4)])  # decodes cleanly
    assert images.shape == (5, 16, 16, 3)


def _pixels(data: ImageData, size: int) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in data.batches(size, 2)])


@pytest.mark.parametrize("bad_files", [False, True])
def test_the_check_keeps_images_decoded_so_training_reads_no_file_again(folder, bad_files):
    # The doctor's check decodes every file; with image_size it keeps them, and the
    # splits carry them: training at that size decodes nothing a second time.
    if bad_files:
        make_bad_files(folder / "a")  # skipped files must not shift the kept pixels
    for i in range(3, 6):
        save_rgb(folder / "b" / f"{i}.png", seed=20 + i)
    plain = from_folder(folder, on_bad_file="skip")
    decoded = dict(zip(plain.files, _pixels(plain, 16), strict=True))
    splits = load_splits(folder, val_split=0.4, seed=0, on_bad_file="skip", image_size=16)
    for path in list(folder.rglob("*")):
        if path.is_file():
            path.unlink()  # nothing left to read
    for part in (splits.train, splits.val):
        np.testing.assert_array_equal(_pixels(part, 16), [decoded[f] for f in part.files])
    assert splits.train._pixels[16][0] is splits.val._pixels[16][0]  # one store, shared


@pytest.mark.parametrize("check_files", ["full", "header"])
def test_sets_over_the_memory_budget_are_decoded_every_epoch_instead(folder, check_files):
    # 5 images at 16 px need 3,840 bytes: one byte less keeps nothing, ever.
    over = from_folder(folder, image_size=16, check_files=check_files,
                       decoded_memory=5 * 16 * 16 * 3 - 1)
    kept = from_folder(folder, image_size=16, decoded_memory=5 * 16 * 16 * 3)
    assert not over._pixels and kept._pixels[16][0].shape == (5, 16, 16, 3)
    first = _pixels(over, 16)
    np.testing.assert_array_equal(first, _pixels(over, 16))
    np.testing.assert_array_equal(first, _pixels(kept, 16))  # the same pixels either way
    assert not over._pixels  # no store was allocated while streaming


def test_a_store_allocated_during_training_keeps_what_the_first_epoch_decoded(folder):
    data = from_folder(folder, check_files="header")  # nothing decoded yet
    first = _pixels(data, 16)
    assert data._pixels[16][1].all()  # filled by the first epoch
    for path in list(folder.rglob("*")):
        if path.is_file():
            path.unlink()
    np.testing.assert_array_equal(_pixels(data, 16), first)  # read from RAM


def test_empty_class_folder_is_an_error_naming_it(folder):
    (folder / "c").mkdir()
    with pytest.raises(DataError, match=str(folder / "c")):
        from_folder(folder)


def test_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="not found.*nowhere"):
        from_folder(tmp_path / "nowhere")


def test_validation_classes_must_match_training_classes(folder, tmp_path):
    val = tmp_path / "val"
    save_rgb(val / "a" / "0.jpg")
    save_rgb(val / "z" / "0.jpg")
    with pytest.raises(DataError, match=r"missing here: \['b'\]; extra here: \['z'\]"):
        load_splits(folder, val_dir=val)


def test_validation_folder_uses_training_label_order(tmp_path):
    save_rgb(tmp_path / "val" / "b" / "0.jpg")
    save_rgb(tmp_path / "val" / "a" / "0.jpg")
    data = from_folder(tmp_path / "val", class_names=["b", "a"])
    assert [os.path.basename(os.path.dirname(f)) for f in data.files] == ["b", "a"]
    assert data.labels.tolist() == [0, 1]


def test_decoded_files_are_rgb_with_exif_orientation_applied(tmp_path):
    exif_rotated_jpeg(tmp_path / "x" / "phone.jpg")
    cmyk_jpeg(tmp_path / "x" / "cmyk.jpg")
    sixteen_bit_png(tmp_path / "x" / "deep.png", value=200 * 257)
    rgba_png(tmp_path / "y" / "alpha.png")
    data = from_folder(tmp_path)
    pairs = zip(data.files, data.decoded(20), strict=True)
    images = {os.path.basename(path): image.numpy() for path, (image, _) in pairs}
    rotated = images["phone.jpg"].astype(int)
    # Upright the red half is on top; unrotated it would be on the left.
    assert np.abs(rotated[2, 10] - (255, 0, 0)).max() < 30
    assert np.abs(rotated[17, 10] - (0, 0, 255)).max() < 30
    assert np.abs(images["cmyk.jpg"][10, 10] - (255, 0, 0)).max() < 10
    assert np.all(images["deep.png"] == 200)
    assert np.all(images["alpha.png"] == (10, 20, 30))
    assert all(x.shape == (20, 20, 3) and x.dtype == np.float32 for x in images.values())


def test_fingerprint_changes_when_a_file_changes(folder):
    data = from_folder(folder)
    before = data.fingerprint()
    assert from_folder(folder).fingerprint() == before
    path = data.files[0]
    save_rgb(folder / "a" / "0.jpg", seed=123, size=(40, 40))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert data.fingerprint() != before


# ---------------------------------------------------------------- order and augmentation


def test_batch_order_is_a_pure_function_of_the_seed():
    data = from_arrays(indexed_images(20), np.arange(20) % 2)
    assert order_of(data.batches(8, 6)) == list(range(20))
    tf.random.set_seed(1)
    first = order_of(data.batches(8, 6, shuffle_seed=3))
    tf.random.set_seed(2)  # TensorFlow's global seed must not matter
    assert order_of(data.batches(8, 6, shuffle_seed=3)) == first
    assert order_of(data.batches(8, 6, shuffle_seed=4)) != first
    assert sorted(first) == list(range(20))


def test_labels_follow_their_images_when_shuffled():
    data = from_arrays(indexed_images(12), np.arange(12))
    for images, labels in data.batches(8, 5, shuffle_seed=0):
        assert images[:, 0, 0, 0].numpy().tolist() == labels.numpy().tolist()


def test_augmentation_applies_only_when_passed():
    images = np.stack([noise((16, 16), seed=i) for i in range(4)])
    data = from_arrays(images, [0, 1, 0, 1])
    plain = next(iter(data.batches(16, 4)))[0].numpy()
    assert np.array_equal(plain, images.astype(np.float32))
    augmented = next(iter(data.batches(16, 4, augment=augmentation(["rotation"], seed=0))))[0]
    assert not np.allclose(augmented.numpy(), plain)


def test_augmentation_names():
    assert [layer.name for layer in augmentation(seed=0).layers] == [
        "flip",
        "rotation",
        "zoom",
        "contrast",
        "translate",
    ]
    assert augmentation([]) is None
    with pytest.raises(ConfigError, match=r"\['blur'\].*'flip', 'rotation', 'zoom', 'contrast'"):
        augmentation(["flip", "blur"])


# ---------------------------------------------------------------- arrays and splits


def test_grayscale_arrays_become_rgb_batches_of_the_requested_size():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    data = from_arrays(images, [0, 1, 2, 0, 1])
    batch, labels = next(iter(data.batches(32, 5)))
    assert batch.shape == (5, 32, 32, 3) and batch.dtype == tf.float32
    assert np.array_equal(batch[..., 0], batch[..., 2])
    assert data.class_names == ["0", "1", "2"]
    assert labels.numpy().tolist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 8, 8, 2)), [0, 1, 0, 1], r"received shape \(4, 8, 8, 2\)"),
        (np.zeros((4, 8, 8)), [0, 1, 0], r"images of shape \(4, 8, 8\) and labels of shape \(3,\)"),
        (np.full((4, 8, 8), 0.5), [0, 1, 0, 1], r"\[0, 255\].*\[0.5, 0.5\]"),
    ],
)
def test_unusable_arrays_are_refused_quoting_what_was_received(images, labels, match):
    with pytest.raises(DataError, match=match):
        from_arrays(images, labels)


def test_split_is_stratified_seeded_and_disjoint():
    data = from_arrays(indexed_images(30), [0] * 20 + [1] * 10)
    train, val = train_val_split(data, 0.2, seed=0)
    assert np.bincount(val.labels).tolist() == [4, 2]
    assert len(train) + len(val) == 30
    again = train_val_split(data, 0.2, seed=0)[1]
    other = train_val_split(data, 0.2, seed=1)[1]
    assert val.fingerprint() == again.fingerprint() != other.fingerprint()


def test_load_splits_holds_out_validation_without_val_dir(folder):
    for i in range(3, 6):
        save_rgb(folder / "b" / f"{i}.png", seed=20 + i)
    splits = load_splits(folder, val_split=0.4, seed=0)
    assert splits.class_names == ["a", "b"]
    assert sorted(splits.val.labels.tolist()) == [0, 0, 1, 1]  # 40% of 3 a + 5 b, rounded up
    assert not set(splits.train.files) & set(splits.val.files)
    assert splits.test is None


def test_image_data_needs_files_or_images():
    with pytest.raises(DataError, match="exactly one of files= or images="):
        ImageData(class_names=["a"], labels=np.zeros(1))


def test_auto_validation_holds_out_only_what_validates_something():
    from kerastl.data.splits import AUTO_VAL_SHARE, MIN_VAL_PER_CLASS, auto_val_share

    enough = int(MIN_VAL_PER_CLASS / AUTO_VAL_SHARE)
    few = kerastl.from_arrays(np.zeros((2 * (enough - 1), 8, 8), "uint8"),
                              [0, 1] * (enough - 1))
    many = kerastl.from_arrays(np.zeros((2 * enough, 8, 8), "uint8"), [0, 1] * enough)
    share, why = auto_val_share(few)
    # What the run keeps without validation is the run's to say, once (issue 27).
    assert share == 0.0 and "--val-data" in why and "last epoch" not in why
    assert auto_val_share(many)[0] == AUTO_VAL_SHARE


def test_load_splits_says_what_it_held_out(tmp_path):
    root = tmp_path / "train"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(root / name / f"{i}.png")
    tiny = load_splits(root)  # "auto": 4 images a class validate nothing
    assert tiny.val is None and len(tiny.train) == 8 and "none held out" in tiny.notes[0]
    split = load_splits(root, val_split=0.5)
    assert len(split.val) == 4 and len(split.train) == 4
    assert load_splits(root, val_split=0).val is None


@pytest.mark.parametrize("shuffle_seed", [3, None])  # None: validation batches
@pytest.mark.parametrize("replicas,pipelines,count", [(2, 2, 11), (4, 2, 13), (2, 2, 8)])
def test_each_worker_reads_only_its_share_of_every_global_batch(replicas, pipelines, count,
                                                                 shuffle_seed):
    # Pixel value = image index, so each batch says which images it holds.
    images = np.repeat(np.arange(count, dtype=np.uint8), 8 * 8).reshape(count, 8, 8)
    data = from_arrays(images, np.arange(count) % 2)
    global_batch = 4

    def ids(batch):
        return sorted(int(v) for v in batch[0].numpy()[:, 0, 0, 0])

    expected = [ids(b) for b in data.batches(8, global_batch, shuffle_seed=shuffle_seed)]
    per_pipeline = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        per_pipeline.append([ids(b) for b in data.worker_batches(
            8, global_batch, context, shuffle_seed=shuffle_seed)])
    local = replicas // pipelines
    # Same number of per-replica batches everywhere: no worker waits on another.
    assert {len(batches) for batches in per_pipeline} == {len(expected) * local}
    read = [sorted(i for b in batches for i in b) for batches in per_pipeline]
    assert sorted(sum(read, [])) == list(range(count))  # each image read exactly once
    for step, wanted in enumerate(expected):  # each step trains on the same global batch
        got = [i for batches in per_pipeline
               for b in batches[step * local:(step + 1) * local] for i in b]
        assert sorted(got) == wanted

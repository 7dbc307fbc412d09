"""TFRecord shards (``--data 'dir/train-*.tfrecord'``) load, train, evaluate and resume
like a class folder."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.core.errors import DataError
from kerastl.data.splits import load_splits
from kerastl.data.tfrecords import IMAGE_KEY, LABEL_KEY, from_tfrecords, write_tfrecords

CLASSES = ["cat", "dog", "fox"]


def _arrays(count=12, side=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    return images, np.arange(count) % len(CLASSES)


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTL_CACHE", str(tmp_path / "cache"))
    images, labels = _arrays()
    write_tfrecords(tmp_path / "train", images, labels, CLASSES, shards=3)
    return tmp_path, images, labels


def test_shards_give_the_images_labels_and_class_names_written(shards):
    root, images, labels = shards
    data = from_tfrecords(str(root / "train-*.tfrecord"))
    assert data.class_names == CLASSES and len(data) == len(images)
    pixels = np.concatenate([x.numpy() for x, _ in data.batches(16, 4)])
    # Every image comes back unchanged (PNG is lossless, no resize at its own size).
    written = {images[i].tobytes(): int(labels[i]) for i in range(len(images))}
    for image, label in zip(pixels.astype(np.uint8), data.labels, strict=True):
        assert written[image.tobytes()] == label


def test_no_matching_shard_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"^No TFRecord shard matches '.*nothing-\*"):
        from_tfrecords(str(tmp_path / "nothing-*.tfrecord"))


def test_a_record_without_the_label_feature_names_shard_and_record(tmp_path):
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        feature = {IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy()]))}
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                     .SerializeToString())
    with pytest.raises(DataError, match=f"bad.tfrecord record 0: no '{LABEL_KEY}' feature"):
        from_tfrecords(path, cache_dir=tmp_path / "cache")


def test_a_label_outside_the_classes_is_refused_naming_the_record(shards):
    root, _, _ = shards
    with pytest.raises(DataError, match=r"record 0: image/class/label 2 is outside the 2 "):
        from_tfrecords(str(root / "train-00002-*.tfrecord"), class_names=["cat", "dog"])


def test_labels_txt_names_the_classes_when_records_carry_no_text(tmp_path):
    path = str(tmp_path / "plain.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for label in (0, 1):
            feature = {
                IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(np.full((4, 4, 3), label, np.uint8)).numpy()])),
                LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                         .SerializeToString())
    (tmp_path / "labels.txt").write_text("ant\nbee\n")
    data = from_tfrecords(path, cache_dir=tmp_path / "cache")
    assert data.class_names == ["ant", "bee"] and data.labels.tolist() == [0, 1]


def test_load_splits_reads_shards_for_validation_too(shards):
    root, images, labels = shards
    write_tfrecords(root / "val", images[:3], labels[:3], CLASSES, shards=1)
    splits = load_splits(str(root / "train-*.tfrecord"),
                         val_dir=str(root / "val-*.tfrecord"))
    assert splits.class_names == CLASSES and len(splits.val) == 3


def test_shards_train_evaluate_and_resume_like_a_folder(shards):
    root, _, _ = shards
    config = dict(data=str(root / "train-*.tfrecord"), backbone="MobileNetV2",
                  backbone_kwargs={"alpha": 0.35}, weights="none", mode="frozen",
                  image_size=32, batch_size=4, val_split=0, verbose=0)
    result = kerastl.fit(kerastl.RunConfig(**config, epochs=1, output=str(root / "run")))
    assert result.metrics["accuracy"] >= 0
    interp = kerastl.interpret(str(root / "run"), str(root / "train-*.tfrecord"))
    assert interp.probabilities.shape == (12, 3)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt("simulated crash")

    crashed = str(root / "crashed")
    with pytest.raises(KeyboardInterrupt):
        kerastl.fit(kerastl.RunConfig(**config, epochs=2, output=crashed),
                    callbacks=[Crash()])
    resumed = kerastl.fit(kerastl.RunConfig(output=crashed, resume=True, verbose=0))
    assert len(resumed.history) == 2

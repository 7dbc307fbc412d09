"""``--augment auto``: flips only for images that look the same in a mirror."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

import kerastl
from kerastl.core.errors import ConfigError
from kerastl.data.mirror import MAX_IMAGES, mirror_check, resolve_augment
from kerastl.recipes.fit import fit
from kerastl.recipes.resolve import resolve_config

from .conftest import source_backbone


def _digits(mirrored_copies: bool = False, per_class: int = 30) -> kerastl.ImageData:
    """Real digits 0-9 as uint8 images; optionally each with its mirror image, same label."""
    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    images, labels = (digits.images[keep] * 15).astype("uint8"), digits.target[keep]  # 0-240
    if mirrored_copies:
        images, labels = np.concatenate([images, images[:, :, ::-1]]), np.concatenate([labels] * 2)
    return kerastl.from_arrays(images, labels, class_names=[str(c) for c in range(10)])


def test_digits_have_a_left_and_a_right():
    check = mirror_check(_digits())
    assert not check.flip
    assert check.original > 0.8 and check.mirrored < 0.6, check
    assert "no flips" in check.reason and "--augment flip,translate" in check.reason


def test_data_that_holds_both_orientations_keeps_flips():
    # The same digits with their mirror images added: now a mirror image is data.
    check = mirror_check(_digits(mirrored_copies=True))
    assert check.flip and check.retained > 0.9, check


def test_the_check_keeps_flips_when_it_cannot_tell():
    few = mirror_check(kerastl.from_arrays(np.zeros((3, 8, 8), "uint8"), [0, 0, 1]))
    assert few.flip and "too few images" in few.reason
    noise = np.random.default_rng(0).integers(0, 255, (60, 8, 8)).astype("uint8")
    chance = mirror_check(kerastl.from_arrays(noise, [0, 1] * 30))
    assert chance.flip and "says nothing about orientation" in chance.reason
    multilabel = kerastl.from_arrays(noise[:4], np.eye(2, dtype="int64")[[0, 1, 0, 1]])
    assert mirror_check(multilabel).flip and "multi-label" in mirror_check(multilabel).reason


def test_a_large_set_with_rare_classes_is_sampled_per_class():
    # More than MAX_IMAGES images, a class of 2 and a class of 1: a random subsample
    # could keep one image of a class, too few to hold out. The check samples each class,
    # leaves the single image out of the check, and still decides.
    digits = _digits(per_class=200)
    images = np.concatenate([digits.images] * 2 + [digits.images[:3]])
    labels = np.concatenate([digits.labels] * 2 + [[10, 10, 11]])
    assert len(images) > MAX_IMAGES
    check = mirror_check(kerastl.from_arrays(images, labels))
    assert not check.flip and check.original > 0.8, check


@pytest.mark.parametrize(("given", "resolved"), [
    ("auto", ["auto"]), ("flip, translate", ["flip", "translate"]), ("none", []), (None, [])])
def test_augment_written_as_text_or_left_empty_in_yaml_is_a_list(given, resolved):
    assert resolve_config(kerastl.RunConfig(augment=given)).augment == resolved


def test_explicit_augmentations_are_never_second_guessed():
    assert resolve_augment(["flip", "translate"], _digits()) == (["flip", "translate"], None)
    assert resolve_augment([], _digits()) == ([], None)
    chosen, reason = resolve_augment(["auto"], _digits())
    assert chosen == ["translate"] and reason.startswith("--augment auto: translate")


def test_auto_stands_alone():
    with pytest.raises(ConfigError, match="stands alone"):
        resolve_config(kerastl.RunConfig(augment=["auto", "flip"]))


def test_a_default_run_records_what_auto_chose(tmp_path):
    digits = _digits(per_class=12)
    source = source_backbone()
    config = kerastl.RunConfig(
        backbone=source["backbone"], backbone_kwargs=source["backbone_kwargs"],
        image_size=32, batch_size=32, epochs=1, mode="scratch", verbose=0,
        precision="float32", output=str(tmp_path / "run"))
    assert config.augment == ["auto"]
    result = fit(config, splits=kerastl.DataSplits(train=digits, val=None, test=None,
                                                     class_names=digits.class_names))
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["augment"] == ["translate"]  # --config reproduces the run as it ran
    assert any(note.startswith("--augment auto: translate") for note in result.notes)

"""``kerastl.fit`` on small in-memory splits: which path each phase takes, what it reports."""

from __future__ import annotations

import json

from sklearn.datasets import load_digits

import kerastl
from kerastl.run import fit

from .conftest import source_backbone


def _digits_splits(n_train: int = 48, n_val: int = 24, test: bool = True,
                   classes: int = 3) -> kerastl.DataSplits:
    """Real digits as 8x8 uint8 images (resized to the model's input by the data layer)."""
    digits = load_digits()
    keep = digits.target < classes
    images, labels = (digits.images[keep] * 16).astype("uint8"), digits.target[keep]
    names = [str(i) for i in range(classes)]
    end_val = n_train + n_val
    return kerastl.DataSplits(
        train=kerastl.from_arrays(images[:n_train], labels[:n_train], class_names=names),
        val=kerastl.from_arrays(images[n_train:end_val], labels[n_train:end_val],
                                class_names=names),
        test=(kerastl.from_arrays(images[end_val:end_val + 24], labels[end_val:end_val + 24],
                                  class_names=names) if test else None),
        class_names=names,
    )


def _config(tmp_path, name: str, **values) -> kerastl.RunConfig:
    return kerastl.RunConfig(**{"image_size": 32, "batch_size": 16, "augment": [],
                                "verbose": 0, "seed": 1, "output": str(tmp_path / name),
                                **values})


def _source(**values) -> dict:
    source = source_backbone()
    return {"backbone": source["backbone"], "backbone_kwargs": source["backbone_kwargs"],
            "weights": source["weights"], **values}


# ------------------------------------------------------------------ feature cache
def test_bn_policy_train_with_the_feature_cache_trains_both_phases(tmp_path):
    # The head phase trains on cached features (its extractor calls the base with
    # training=False); the fine-tuning phase must still let BatchNorm train.
    result = fit(_config(tmp_path, "bn", **_source(), mode="finetune", epochs=2,
                         head_epochs=1, unfreeze_blocks=1, bn_policy="train"),
                 splits=_digits_splits())
    assert [row["phase"] for row in result.history] == ["head", "finetune"]
    assert any("cached base features" in note for note in result.notes)


def test_dropout_inside_the_base_falls_back_to_image_batches_and_says_why(tmp_path):
    # EfficientNet's drop-connect runs during training when BatchNorm trains, so the
    # features of a frozen phase are not a fixed function of the image.
    result = fit(_config(tmp_path, "eff", backbone="EfficientNetB0", weights=None,
                         mode="finetune", epochs=2, head_epochs=1, unfreeze_blocks=1,
                         bn_policy="train"),
                 splits=_digits_splits(n_train=16, n_val=8))
    assert [row["phase"] for row in result.history] == ["head", "finetune"]
    assert not any("cached base features" in note for note in result.notes)
    why = [note for note in result.notes if note.startswith("phase 'head'")]
    assert why and "Dropout" in why[0], result.notes
    saved = json.loads((result.output_dir / "run.json").read_text())["notes"]
    assert saved == result.notes

"""``kerastl compare``: every regime on the same data, one table, one JSON, one plot."""

from __future__ import annotations

import json

import pytest

import kerastl
from kerastl.commands.compare import compare_main as main
from kerastl.core.errors import ConfigError
from kerastl.data.samples import data_samples_dir, source_backbone
from kerastl.recipes.compare_regimes import REGIMES, compare

SAMPLES = data_samples_dir() / "fashion"
# The shipped source backbone (pretrained on five other Fashion-MNIST classes), so the
# regimes differ in what they learn: a random base would leave every one at chance.
SOURCE = source_backbone()
SOURCE_WEIGHTS = SOURCE["weights"]
SOURCE_FEATURES = 432  # MobileNetV3Small alpha=0.75 pools 432 features
TINY = dict(
    data=str(SAMPLES / "train"), val_data=str(SAMPLES / "val"), test_data=str(SAMPLES / "test"),
    backbone=SOURCE["backbone"], backbone_kwargs=SOURCE["backbone_kwargs"],
    weights=SOURCE_WEIGHTS, image_size=32, batch_size=64, augment=[], verbose=0, seed=3,
    epochs=1,
)
TINY_FLAGS = [
    "--data", TINY["data"], "--val-data", TINY["val_data"], "--test-data", TINY["test_data"],
    "--backbone", SOURCE["backbone"], "--backbone-args",
    ",".join(f"{k}={v}" for k, v in SOURCE["backbone_kwargs"].items()),
    "--weights", SOURCE_WEIGHTS, "--image-size", "32", "--batch-size", "64",
    "--augment", "none", "--verbose", "0", "--seed", "3", "--epochs", "1",
]
CHANCE = 1 / 5


@pytest.fixture(scope="module")
def every_regime(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, compare(kerastl.RunConfig(**TINY), output=out)


@pytest.mark.slow
def test_every_regime_is_in_the_table_and_the_json(every_regime):
    out, rows = every_regime
    assert [row["regime"] for row in rows] == list(REGIMES)
    table = (out / "comparison.md").read_text()
    for regime in REGIMES:
        assert f"| {regime} |" in table
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_regimes_share_data_and_epoch_budget(every_regime):
    out, rows = every_regime
    n_train = sum(1 for p in (SAMPLES / "train").rglob("*") if p.is_file())
    for row in rows:
        assert row["examples"] == n_train
        assert row["evaluated_on"] == "test"
        assert row["epochs"] == (None if row["regime"] == "sklearn-logreg" else 1)
    accuracy = {row["regime"]: row["accuracy"] for row in rows}
    # One epoch (8 steps) from the source backbone, measured on 300 test images with
    # seeds 3, 4, 5 in float32 / mixed_bfloat16: frozen 0.31-0.42 / 0.34-0.46, finetune
    # 0.37-0.47 / 0.42-0.45, logistic regression 0.887, scratch 0.20 (one class). Bars
    # below the worst: pretrained features carry over, a random base at one epoch not.
    assert accuracy["sklearn-logreg"] > 0.7
    assert accuracy["frozen"] > CHANCE + 0.05 and accuracy["finetune"] > CHANCE + 0.05
    assert accuracy["scratch"] < min(accuracy["frozen"], accuracy["finetune"])
    params = {row["regime"]: row["trainable_params"] for row in rows}
    # The scratch model trains everything, the frozen one only its head; the
    # logistic regression has one weight per feature and class plus biases.
    assert params["frozen"] < params["finetune"] < params["scratch"]
    assert params["sklearn-logreg"] == (SOURCE_FEATURES + 1) * 5
    assert "cached base features" in rows[0]["note"]
    assert (out / "fraction-1" / "finetune" / "model.keras").is_file()
    assert (out / "fraction-1" / "sklearn-logreg" / "head.json").is_file()


def test_fractions_give_one_row_each_with_fewer_examples(tmp_path, capsys):
    out = tmp_path / "fractions"
    code = main([*TINY_FLAGS, "--regimes", "frozen", "--fractions", "0.5,1.0",
                 "--output", str(out)])
    assert code == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [(r["fraction"], r["regime"]) for r in rows] == [(0.5, "frozen"), (1.0, "frozen")]
    half, full = rows[0]["examples"], rows[1]["examples"]
    assert half == pytest.approx(full / 2, abs=1)
    # The subset is stratified: every class keeps about half of its images.
    subset = out / "fraction-0.5" / "data" / "train"
    for folder in (SAMPLES / "train").iterdir():
        assert len(list((subset / folder.name).iterdir())) == pytest.approx(
            len(list(folder.iterdir())) / 2, abs=1)
    assert "| 0.5 | frozen |" in capsys.readouterr().out


def test_unknown_regime_is_refused_quoting_it(tmp_path):
    with pytest.raises(ConfigError, match="linear-probe"):
        compare(kerastl.RunConfig(**TINY), regimes=["linear-probe"], output=tmp_path)
    assert main([*TINY_FLAGS, "--fractions", "1.5", "--output", str(tmp_path)]) == 2

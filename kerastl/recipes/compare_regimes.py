"""Frozen vs fine-tuned vs scratch vs a scikit-learn probe, on the same data.

:func:`compare` runs each regime with :func:`kerastl.fit` on the same data, splits,
seed and epoch budget (each in its own sub-directory of ``output``), adds a
logistic regression on frozen base features, and writes ``comparison.md``,
``comparison.json`` and ``comparison.png``. With several ``fractions`` it repeats
the study on seeded, stratified subsets of the training images, which shows where
transfer learning pays most: with few labelled examples.

Example:
    >>> import kerastl
    >>> from kerastl.recipes.compare_regimes import compare
    >>> rows = compare(kerastl.RunConfig(epochs=3), output="runs/compare")  # doctest: +SKIP
    >>> [row["regime"] for row in rows]  # doctest: +SKIP
    ['frozen', 'finetune', 'scratch', 'sklearn-logreg']

    python -m kerastl.compare --epochs 3 --fractions 0.1,0.3,1.0 --output runs/compare
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config.choices import DEFAULT_UNFREEZE_BLOCKS
from ..config.phases import Phase
from ..config.schema import RunConfig
from ..core.errors import ConfigError
from ..core.files import atomic_write_json, atomic_write_text, save_figure
from ..data.image_data import ImageData
from ..data.splits import load_splits, train_val_split
from ..models.build import build_model
from ..models.sklearn_head import SklearnClassifier
from ..outputs.run_dir import RunDir
from .fit import fit
from .resolve import resolve_config

REGIMES = ("frozen", "finetune", "scratch", "sklearn-logreg")
COLUMNS = ("fraction", "regime", "accuracy", "seconds", "trainable_params", "epochs",
           "examples")


def compare(
    config: RunConfig,
    *,
    regimes: Sequence[str] = REGIMES,
    fractions: Sequence[float] = (1.0,),
    output: str | os.PathLike,
) -> list[dict[str, Any]]:
    """Train every regime on the same data and tabulate accuracy, time and size.

    Args:
        config: RunConfig. Data, model and optimisation shared by every regime;
            its ``mode``, ``phases`` and ``output`` are replaced per regime.
        regimes: sequence of str. Any of ``"frozen"``, ``"finetune"``,
            ``"scratch"``, ``"sklearn-logreg"``. Defaults to all four.
        fractions: sequence of float. Shares of the training images in ``(0, 1]``;
            each is a seeded stratified subset (validation and test stay whole).
            Defaults to ``(1.0,)``.
        output: str or path. Directory of the comparison; run ``R`` at fraction ``F``
            goes to ``output/fraction-F/R``.

    Returns:
        One dict per (fraction, regime) with the keys of :data:`COLUMNS` plus
        ``evaluated_on``, ``output_dir`` and ``note``.

    Raises:
        ConfigError: an unknown regime or a fraction outside ``(0, 1]``.

    Example:
        >>> rows = kerastl.compare(kerastl.RunConfig(epochs=3),
        ...                        output="runs/compare")  # doctest: +SKIP
        >>> [(row["regime"], row["accuracy"]) for row in rows]  # doctest: +SKIP
    """
    regimes, fractions = _check_regimes(regimes), _check_fractions(fractions)
    # Resolved once, so every regime (and the scikit-learn probe, which does not go
    # through fit) sees the same data, weights and input size. The head is pinned as
    # given (the schema's otherwise): auto's multi-depth head is auto's own, and no
    # regime compared here is auto.
    base = resolve_config(config.replace(phases=None, resume=False, head=config.head))
    output = Path(output)
    rows: list[dict[str, Any]] = []
    for fraction in fractions:
        data = _fraction_config(base, fraction, output / f"fraction-{fraction:g}")
        for regime in regimes:
            run_dir = output / f"fraction-{fraction:g}" / regime
            row = (_sklearn_row(data, run_dir) if regime == "sklearn-logreg"
                   else _fit_row(data, regime, run_dir))
            rows.append({"fraction": fraction, "regime": regime, **row})
            _write_outputs(rows, output)
    return rows


# ------------------------------------------------------------------ arguments
def _check_regimes(regimes: Sequence[str]) -> list[str]:
    regimes = list(regimes)
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown or not regimes:
        raise ConfigError(f"regimes must be a non-empty list of {REGIMES}; received {regimes}.")
    return regimes


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fractions = [float(f) for f in fractions]
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ConfigError(f"fractions must be numbers in (0, 1]; received {fractions}.")
    return sorted(set(fractions))


# ------------------------------------------------------------------ data per fraction
def _fraction_config(base: RunConfig, fraction: float, directory: Path) -> RunConfig:
    """The config for one fraction: the full data, or folders of a seeded subset.

    ``fit`` reads folders, so a subset is a folder of links to the chosen files.
    The validation split is drawn from the full training folder first, so every
    fraction is scored on the same validation and test images.
    """
    if fraction == 1.0:
        return base
    splits = load_splits(base.data, val_dir=base.val_data, val_split=base.val_split,
                         seed=base.seed, on_bad_file=base.on_bad_file,
                         check_files=base.check_files, decoded_memory=base.decoded_memory)
    train, _ = train_val_split(splits.train, 1.0 - fraction, base.seed)
    config = base.replace(data=str(_link_folder(train, directory / "data" / "train")))
    if base.val_data is None and splits.val is not None:
        config.val_data = str(_link_folder(splits.val, directory / "data" / "val"))
    return config


def _link_folder(data: ImageData, root: Path) -> Path:
    if data.files is None:
        raise ConfigError("compare needs image folders; received in-memory images.")
    if root.exists():
        shutil.rmtree(root)
    for name in data.class_names:
        (root / name).mkdir(parents=True)  # empty classes stay classes
    for i, (path, label) in enumerate(zip(data.files, data.labels, strict=True)):
        target = root / data.class_names[label] / f"{i:06d}{Path(path).suffix}"
        try:
            target.symlink_to(Path(path).resolve())
        except OSError:  # file systems without symlinks
            shutil.copy2(path, target)
    return root


# ------------------------------------------------------------------ one regime
def _regime_config(data: RunConfig, regime: str, run_dir: Path) -> tuple[RunConfig, str]:
    config = data.replace(mode=regime, output=str(run_dir))
    note = ""
    if regime == "finetune" and config.epochs != "auto" and config.epochs < 2:
        # A head warm-up plus a fine-tuning phase needs two epochs; with one, the
        # whole budget goes to fine-tuning (still at the lower fine-tuning rate).
        unfreeze = ({"unfreeze_blocks": DEFAULT_UNFREEZE_BLOCKS} if config.unfreeze_top is None
                    and config.unfreeze_blocks is None
                    else {"unfreeze_top": config.unfreeze_top,
                          "unfreeze_blocks": config.unfreeze_blocks})
        config.phases = [Phase("finetune", config.epochs, mode="finetune",
                               lr=config.lr * config.finetune_lr_factor,
                               bn_policy=config.bn_policy, **unfreeze)]
        note = "1 epoch: no head warm-up"
    return config, note


def _fit_row(data: RunConfig, regime: str, run_dir: Path) -> dict[str, Any]:
    config, note = _regime_config(data, regime, run_dir)
    result = fit(config)
    facts = RunDir(result.output_dir).read_facts()
    return {
        "accuracy": result.metrics.get("accuracy"),
        "seconds": round(result.seconds, 2),
        "trainable_params": facts["trainable_params"],
        "epochs": len(result.history),
        "examples": facts["examples"]["train"],
        "evaluated_on": result.metrics.get("evaluated_on"),
        "output_dir": str(result.output_dir),
        "note": "; ".join(filter(None, [note, *result.notes])),
    }


def _sklearn_row(data: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Logistic regression on pooled frozen features: no epochs, no Keras training."""
    import keras


    started = time.perf_counter()
    keras.utils.set_random_seed(data.seed)
    splits = load_splits(data.data, val_dir=data.val_data, test_dir=data.test_data,
                         val_split=data.val_split, seed=data.seed,
                         on_bad_file=data.on_bad_file)
    model = build_model(data.backbone, len(splits.class_names),
                        **{**data.build_model_kwargs(), "dense_units": ()})
    classifier = SklearnClassifier.fit(model, splits.train, "logreg",
                                       image_size=data.image_size, batch_size=data.batch_size,
                                       random_state=data.seed)
    evaluation = splits.test or splits.val
    predicted = classifier.predict(evaluation)
    accuracy = float(np.mean(np.asarray(predicted) == evaluation.labels))
    seconds = time.perf_counter() - started
    classifier.save(run_dir)
    head = classifier.pipeline.named_steps["head"]
    return {
        "accuracy": accuracy,
        "seconds": round(seconds, 2),
        "trainable_params": int(head.coef_.size + head.intercept_.size),
        "epochs": None,
        "examples": len(splits.train),
        "evaluated_on": "test" if splits.test is not None else "validation",
        "output_dir": str(run_dir),
        "note": "scikit-learn logistic regression on pooled frozen features",
    }


# ------------------------------------------------------------------ outputs
def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table, one line per (fraction, regime)."""
    lines = ["| fraction | regime | accuracy | training time | trainable parameters "
             "| epochs | examples used |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
        epochs = "—" if row["epochs"] is None else str(row["epochs"])
        lines.append(f"| {row['fraction']:g} | {row['regime']} | {accuracy} "
                     f"| {row['seconds']:.1f} s | {row['trainable_params']:,} | {epochs} "
                     f"| {row['examples']:,} |")
    evaluated = sorted({row.get("evaluated_on") or "?" for row in rows})
    return "\n".join(lines) + f"\n\nAccuracy on the {' and '.join(evaluated)} split.\n"


def _write_outputs(rows: list[dict[str, Any]], output: Path) -> None:
    atomic_write_json(output / "comparison.json", {"columns": list(COLUMNS), "rows": rows})
    atomic_write_text(output / "comparison.md", comparison_markdown(rows))
    save_figure(_comparison_figure(rows), output / "comparison.png")


def _comparison_figure(rows: Sequence[dict[str, Any]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    regimes = list(dict.fromkeys(row["regime"] for row in rows))
    fractions = sorted({row["fraction"] for row in rows})
    if len(fractions) == 1:
        values = [next(r["accuracy"] for r in rows if r["regime"] == name) for name in regimes]
        ax.bar(regimes, values, color="tab:blue")
        ax.set_xlabel("regime")
    else:
        for name in regimes:
            points = sorted((r["fraction"], r["accuracy"]) for r in rows if r["regime"] == name)
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xlabel("fraction of training images")
        ax.legend()
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy per regime")
    return fig


__all__ = ["COLUMNS", "REGIMES", "compare", "comparison_markdown"]

"""A whole run: data → runtime → model → phases → outputs. What the CLI calls.

Example:
    >>> import kerastl
    >>> result = kerastl.fit(kerastl.RunConfig(epochs=2, output="runs/demo"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..config.phases import Phase
from ..config.schema import RunConfig
from ..core import backend as _backend  # noqa: F401
from ..core.console import progress_shown
from ..core.errors import ConfigError
from ..core.files import (
    atomic_write_json,
    inside_output,
)
from ..data.decoding import decode_failure
from ..data.splits import DataSplits
from ..models.sklearn_head import SklearnClassifier
from ..outputs.reports import write_evaluation
from ..outputs.run_dir import RunDir
from ..training.lr_range_test import range_test
from ..training.phase_data import PhaseData
from ..training.pruning import pruning_hooks, write_pruning_report
from .pixel_blend import blend_applies, blended_model, choose_blend
from .run_outputs import (
    cached_evaluation,
    evaluation_split,
    probe_accuracy_of,
    train_time_parts,
    write_epoch_outputs,
    write_final_outputs,
)
from .run_setup import PreparedRun, make_trainer, prepare_run, resume_state_of

OUTPUT_FILES = ("model.keras", "backbone.weights.h5", "labels.json", "config.yaml",
                "history.csv", "metrics.json", "classification_report.txt",
                "confusion_matrix.png", "curves.png", "run.json")


@dataclass
class RunResult:
    """What :func:`fit` returns.

    Attributes:
        output_dir: Path. Where every output was written.
        model: keras.Model. The trained end-to-end model (raw pixels in).
        history: list of dict. One row per epoch (``phase``, ``loss``, ``val_loss``...).
        metrics: dict. Evaluation on the test split (validation split if none).
        class_names: list of str.
        config: RunConfig. The resolved configuration, read-only
            (``config.replace(...)`` gives a changed, writable copy).
        seconds: float. Wall time.
    """

    output_dir: Path
    model: keras.Model
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    class_names: list[str]
    config: RunConfig
    seconds: float
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ the run
def fit(
    config: RunConfig | None = None,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    splits: DataSplits | None = None,
    **overrides: Any,
) -> RunResult:
    """Train a model as described by ``config`` and write every output.

    Args:
        config: RunConfig, optional. Defaults to ``RunConfig()`` (the shipped
            samples with the shipped source backbone).
        callbacks: sequence of keras callbacks, called at every epoch of every phase.
        splits: DataSplits, optional. In-memory data (e.g. from :func:`from_arrays`)
            used instead of the ``data``/``val_data``/``test_data`` folders, which
            must then be unset. ``RunConfig`` stays plain values, so the saved
            ``config.yaml`` does not describe this data: pass the same ``splits``
            again to ``--resume``. Defaults to None (read the folders).
        **overrides: field values replacing those of ``config`` (they count as given).

    Returns:
        A :class:`RunResult`.

    Raises:
        KerastlError: bad configuration or data (nothing in the output directory is
            lost); ``NonFiniteLossError`` if training diverges (checkpoints kept).

    Example:
        >>> result = kerastl.fit(kerastl.RunConfig(data="flowers/train",
        ...                                        backbone="EfficientNetB0"))  # doctest: +SKIP
        >>> result.metrics["accuracy"], result.output_dir  # doctest: +SKIP
    """
    run = prepare_run(config, splits, overrides, kind="train")
    # Bars only where the run prints: not with verbose 0, not on non-chief workers.
    with progress_shown(bool(run.config.verbose and run.runtime.is_chief)):
        return _fit_prepared(run, callbacks)


def _fit_prepared(run: PreparedRun, callbacks) -> RunResult:
    config, out, log, clock = run.config, run.out, run.log, run.clock
    recipe = run.resolved.recipe
    if recipe.sklearn_head:
        return _fit_sklearn(config, run.runtime, run.model, run.splits, out, clock, log)
    prune_hooks = pruning_hooks(recipe.prune, recipe.phases, log)
    trainer = make_trainer(run, callbacks, step_hooks=prune_hooks)
    if prune_hooks:  # the run ends pruned: its best epoch is one of the pruned phase
        trainer.final_from_phase = prune_hooks[0].phase_index
    state, resume_from = resume_state_of(run.resolved.resume_point, log)
    writer = tf.summary.create_file_writer(str(inside_output(out, "tensorboard")))
    served: list[PhaseData] = []  # what each phase trained on, in order
    data_seconds: list[float] = []
    epochs_before = len(state.history)  # a resumed run's earlier epochs ran elsewhere

    def data_for_phase(phase: Phase) -> PhaseData:
        started = time.perf_counter()
        served.append(run.data_for_phase(phase))
        data_seconds.append(time.perf_counter() - started)
        return served[-1]

    try:
        state = trainer.run(recipe.phases, data_for_phase, state, resume_from,
                            on_epoch_end=lambda s: write_epoch_outputs(out, s, writer))
    except tf.errors.InvalidArgumentError as error:
        # A header-only (or no) check lets a truncated file through to the decoder,
        # whose error names no file: name it, in one line.
        text = str(error).lower()
        if config.check_files == "full" or not any(
                word in text for word in ("decod", "uncompress", "invalid jpeg", "png")):
            raise

        files = [f for split in (run.splits.train, run.splits.val)
                 if split is not None and split.files is not None for f in split.files]
        raise decode_failure(error, files, config.check_files) from None
    clock.lap("train")
    clock.split("train", train_time_parts(data_seconds, state.history[epochs_before:]))
    model, blend = (_pixel_blend(config, run.runtime, run.model, run.splits, run.notes, log,
                                 trainer.probe_facts.get("cv_accuracy"))
                    if recipe.pixel_blend else (run.model, None))
    if blend is not None:
        clock.lap("pixel_blend")
    cached = None if model is not run.model else cached_evaluation(config, run.splits,
                                                                   state, served)
    probe_accuracy = probe_accuracy_of(state, trainer.probe_facts)
    metrics = write_final_outputs(out, config, run.runtime, model, run.splits, state,
                             run.notes, clock, log, cached=cached, blend=blend,
                             network=run.model if model is not run.model else None,
                             probe_accuracy=probe_accuracy)
    if prune_hooks and run.runtime.is_chief:
        write_pruning_report(out, prune_hooks[0], model, log)
    return RunResult(out, model, state.history, metrics, run.splits.class_names, config,
                     clock.total(), run.notes)


def _pixel_blend(config: RunConfig, runtime, model, splits, notes: list[str], log,
                 probe_cv_accuracy: float | None = None):
    """``--pixel-blend``: the network plus a logistic regression on its input pixels.

    Returns ``(model the run ends with, facts or None)``. With validation data the
    pixel model's C and weight are chosen on it (weight 0: the network alone);
    without, C is the default and the weight grows with the pixel model's
    cross-validated lead over the run's linear probe, 0 where the probe is ahead
    (:func:`kerastl.recipes.pixel_blend.weight_from_gap`).
    """
    ok, why = blend_applies(model)
    if not ok:  # said, not raised: the trained network is still written
        notes.append(f"no pixel blend: {why}")
        log(f"Note: no pixel blend: {why}")
        return model, None
    pixels, weight, facts = choose_blend(
        model, splits.train, splits.val, image_size=config.image_size, task=config.task,
        batch_size=runtime.global_batch, seed=config.seed,
        probe_cv_accuracy=probe_cv_accuracy)
    facts["kept"] = weight > 0
    shape = "x".join(map(str, facts["pixels"]))
    if weight == 0:
        why = (f"no weight of the {shape} pixels validates better than the network alone "
               f"({facts['val_accuracy_network']:.4f})" if splits.val is not None else
               f"the linear probe cross-validated better ({facts['probe_cv_accuracy']:.4f}) "
               f"than a linear model on the {shape} pixels "
               f"({facts['pixel_cv_accuracy']:.4f})")
        notes.append(f"pixel blend left out: {why}")
        log(f"Pixel blend left out: {why}")
        return model, facts
    checked = (f"C {facts['C']:g}, weight {weight:g} chosen on validation: val_accuracy "
               f"{facts['val_accuracy_network']:.4f} -> {facts['val_accuracy']:.4f}"
               if splits.val is not None else
               f"C {facts['C']:g}, weight {weight:g}: no validation data here, so "
               f"{facts['chosen_on']}; {facts['remedy']}")
    notes.append(f"pixel blend: a logistic regression on the {shape} pooled pixels added "
                 f"to the network's logits ({checked})")
    log(f"Pixel blend: a logistic regression on the {shape} pooled pixels is added to "
        f"the network's logits ({checked})")
    with runtime.strategy.scope():
        return blended_model(model, pixels, weight), facts


def lr_find(
    config: RunConfig | None = None,
    *,
    splits: DataSplits | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    **overrides: Any,
):
    """The learning-rate range test for the run ``config`` describes.

    Prepares the run exactly as :func:`fit` would (data, model, phases) and tests the
    first phase that trains with gradient steps; a linear-probe phase before it is
    fitted first, so a fine-tuning phase is tested from its warmed-up head. The model
    is left as it was. Writes ``lr_find.png`` and ``lr_find.json`` to the output
    directory (default: a new ``runs/lr_findN``).

    Args:
        config: RunConfig, optional. As for :func:`fit`.
        splits: DataSplits, optional. In-memory data, as for :func:`fit`.
        start_lr, end_lr: float. Range of the test. Defaults to 1e-7 and 10.
        steps: int. Optimizer steps at most. Defaults to 100.
        **overrides: field values replacing those of ``config``.

    Returns:
        A :class:`kerastl.training.lr_range_test.LRFinderResult`; ``.suggestion`` is the rate,
        ``.plot()`` draws the curve.

    Example:
        >>> result = kerastl.lr_find(kerastl.RunConfig(mode="frozen"))  # doctest: +SKIP
        >>> result.plot("lr.png")  # doctest: +SKIP
    """
    run = prepare_run(config, splits, overrides, kind="lr_find")
    if run.resolved.recipe.sklearn_head:
        raise ConfigError("lr_find tests a Keras head; --head sklearn-* has no learning rate.")
    trainer = make_trainer(run, (), checkpoints=False)
    phases = run.resolved.recipe.phases
    trained = [(i, p) for i, p in enumerate(phases) if p.fit == "train"]
    if not trained:
        raise ConfigError("This run has no phase trained with gradient steps to test.")
    index, phase = trained[0]
    for earlier in phases[:index]:  # only probes: fitted in seconds
        trainer.fit_probe_phase(earlier, run.data_for_phase(earlier))
    data = run.data_for_phase(phase)
    trainer.prepare_phase(phase, data, constant_lr=True)
    result = range_test(trainer, data, phase_name=phase.name, start_lr=start_lr,
                        end_lr=end_lr, steps=steps)
    result.plot(run.out / "lr_find.png")
    atomic_write_json(run.out / "lr_find.json", result.to_dict())
    run.log(f"lr_find ({phase.name} phase): suggested learning rate {result.suggestion:.3g}; "
            f"plot in {run.out / 'lr_find.png'}")
    return result


def _fit_sklearn(config, runtime, model, splits, out, clock, log):
    """``--head sklearn-KIND``: a scikit-learn head on frozen pooled features."""
    kind = config.sklearn_head
    log(f"Fitting a scikit-learn {kind} head on frozen {config.backbone} features.")
    classifier = SklearnClassifier.fit(model, splits.train, kind, image_size=config.image_size,
                                       batch_size=runtime.global_batch,
                                       strategy=runtime.strategy)
    classifier.save(inside_output(out, "sklearn_classifier"))
    evaluation, which = evaluation_split(splits)
    probs = classifier.predict_proba(evaluation)
    metrics = write_evaluation(out, evaluation.labels, probs, splits.class_names,
                               task=config.task)
    metrics["evaluated_on"] = which
    atomic_write_json(out / "metrics.json", metrics)
    RunDir(out).write_labels(splits.class_names, config.task, config.image_size)
    clock.lap("train")
    seconds = clock.total()
    log(f"{kind} head: accuracy {metrics['accuracy']:.4f} on the {metrics['evaluated_on']} "
        f"split in {seconds:.1f} s. Load it with "
        f"kerastl.SklearnClassifier.load({str(out / 'sklearn_classifier')!r}).")
    return RunResult(out, classifier.extractor, [], metrics, splits.class_names, config,
                     seconds, [f"scikit-learn {kind} head on frozen features"])

"""A whole run: data → runtime → model → phases → outputs. What the CLI calls.

Example:
    >>> import kerastl
    >>> result = kerastl.fit(kerastl.RunConfig(epochs=2, output="runs/demo"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..config.phases import Phase
from ..config.schema import RESUME_OVERRIDES, RunConfig, load_yaml
from ..core import backend as _backend  # noqa: F401
from ..core.console import epoch_in_phase, hint, progress_shown, wrapped
from ..core.errors import ConfigError, DataError
from ..core.files import (
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    inside_output,
    mark_latest,
    new_run_dir,
)
from ..core.version import __version__
from ..data.decoding import decode_failure
from ..data.image_data import augmentation
from ..data.image_data import epoch_seed as data_epoch_seed
from ..data.mirror import resolve_augment
from ..data.splits import DataSplits, load_splits
from ..models.build import build_model, head_model
from ..models.feature_cache import FeatureCache
from ..models.features import cache_applies, cached_feature_datasets
from ..models.freezing import count_params, set_regime
from ..models.sklearn_head import SklearnClassifier
from ..models.weights import RUN_WEIGHTS_FILE, has_pretrained_weights, save_base_weights
from ..outputs.health import chance_accuracy, check_network
from ..outputs.report_page import write_run_report
from ..outputs.reports import plot_curves, summary_text, write_evaluation, write_history_csv
from ..training.checkpoints import TrainState, latest_readable_state, list_checkpoints
from ..training.lr_range_test import range_test, suggest_lr
from ..training.pruning import pruning_hooks, write_pruning_report
from ..training.runtime import (
    loss_scale_optimizer,
    setup_runtime,
    warn_if_local_data,
    worker_output_dir,
)
from ..training.trainer import (
    PhaseData,
    Trainer,
    class_weights_for,
    correct_count,
    evaluation_losses,
    predict,
)
from .pixel_blend import LOGITS, blend_applies, blended_model, choose_blend
from .plan import plan_phases
from .resolve import native_size, resolve_config

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
        config: RunConfig. The resolved configuration.
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
    run = _prepare(config, splits, overrides, kind="train")
    # Bars only where the run prints: not with verbose 0, not on non-chief workers.
    with progress_shown(bool(run.config.verbose and run.runtime.is_chief)):
        return _fit_prepared(run, callbacks)


def _fit_prepared(run: _Prepared, callbacks) -> RunResult:
    config, out, log, clock = run.config, run.out, run.log, run.clock
    if config.sklearn_head:
        return _fit_sklearn(config, run.runtime, run.model, run.splits, out, clock, log)
    prune_hooks = pruning_hooks(config.prune, config.phases, log)
    trainer = _make_trainer(config, run.runtime, run.model, run.splits, out, callbacks, log,
                            step_hooks=prune_hooks)
    if prune_hooks:  # the run ends pruned: its best epoch is one of the pruned phase
        trainer.final_from_phase = prune_hooks[0].phase_index
    state, resume_from = _resume_state(run.resume_point, log)
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
        state = trainer.run(config.phases, data_for_phase, state, resume_from,
                            on_epoch_end=lambda s: _epoch_outputs(out, s, writer))
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
    clock.split("train", _train_parts(data_seconds, state.history[epochs_before:]))
    model, blend = _pixel_blend(config, run.runtime, run.model, run.splits, run.notes, log,
                                trainer.probe_facts.get("cv_accuracy"))
    if blend is not None:
        clock.lap("pixel_blend")
    cached = None if model is not run.model else _cached_evaluation(config, run.splits,
                                                                   state, served)
    probe_accuracy = _probe_accuracy(state, trainer.probe_facts)
    metrics = _final_outputs(out, config, run.runtime, model, run.splits, state,
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
    without, they are the defaults chosen on the transfer suite
    (:mod:`kerastl.recipes.pixel_blend`),
    unless the run's linear probe cross-validated better than the pixel model.
    """
    if config.pixel_blend != "on":  # "auto" was resolved by _prepare
        return model, None
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
               f"C {facts['C']:g}, weight {weight:g}: no validation data to choose them on")
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
    run = _prepare(config, splits, overrides, kind="lr_find")
    if run.config.sklearn_head:
        raise ConfigError("lr_find tests a Keras head; --head sklearn-* has no learning rate.")
    trainer = _make_trainer(run.config, run.runtime, run.model, run.splits, run.out, (),
                            run.log, checkpoints=False)
    trained = [(i, p) for i, p in enumerate(run.config.phases) if p.fit == "train"]
    if not trained:
        raise ConfigError("This run has no phase trained with gradient steps to test.")
    index, phase = trained[0]
    for earlier in run.config.phases[:index]:  # only probes: fitted in seconds
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


@dataclass
class _Prepared:
    """A run set up and ready to train: what :func:`fit` and :func:`lr_find` share."""

    config: RunConfig
    runtime: Any
    out: Path
    log: Any
    clock: Stopwatch
    splits: DataSplits
    model: keras.Model
    resume_point: tuple[Path, TrainState] | None
    data_for_phase: Any = None
    notes: list[str] = field(default_factory=list)


def _decoded_memory(config: RunConfig) -> str:
    """``config.decoded_memory``, with ``auto`` keeping nothing where the pixels are read
    once after the check: a frozen base without augmentation trains on cached features,
    so keeping N * size * size * 3 bytes would only save one decode pass (on every core)
    and make the run's memory grow with its data."""
    reads_once = ((config.mode == "frozen" or config.sklearn_head) and not config.augment
                  and config.feature_cache != "off" and config.pixel_blend != "on"
                  and config.phases is None)
    return "0" if config.decoded_memory == "auto" and reads_once else config.decoded_memory


def _prepare(config, splits, overrides, *, kind: str) -> _Prepared:
    """Resolve the config, set up the runtime and output, load data, plan, build."""
    clock = Stopwatch()
    config = (config or RunConfig()).replace(**overrides)
    if splits is not None:
        _check_no_folders(config)
    config, resume_point = _resumed(config) if kind == "train" else (config, None)
    config = resolve_config(config, in_memory_data=splits is not None,
                            native_size=lambda resolved: native_size(resolved, splits))
    runtime = setup_runtime(config.strategy, config.precision, batch_size=config.batch_size,
                            jit_compile=config.jit_compile,
                            steps_per_execution=config.steps_per_execution,
                            backbone=config.backbone,
                            intra_op_threads=config.intra_op_threads,
                            image_size=config.image_size,
                            trains_base=config.mode != "frozen" and not config.sklearn_head)
    _seed_everything(config.seed, config.deterministic)
    for path in (config.data, config.val_data, config.test_data):
        if path:
            warn_if_local_data(path, runtime)
    out = _output_dir(config, runtime, kind=kind,
                      resumed=resume_point is not None or config.resume)
    config.output = str(out)
    out = worker_output_dir(out, runtime)
    log = print if (config.verbose and runtime.is_chief) else (lambda *_: None)
    clock.lap("setup")
    if splits is None:
        splits = load_splits(config.data, val_dir=config.val_data, test_dir=config.test_data,
                             val_split=config.val_split, seed=config.seed,
                             on_bad_file=config.on_bad_file, image_size=config.image_size,
                             check_files=config.check_files,
                             decoded_memory=_decoded_memory(config))
    clock.lap("load_data")
    _check_two_classes(splits, config.data)
    log(runtime.summary())
    notes: list[str] = list(splits.notes)
    if config.sklearn_head:
        config.augment = [name for name in config.augment if name != "auto"]  # never augments
    else:
        # Seed 0, not the run's: the decision depends on the data alone, so runs that
        # differ only in seed (draws, --compare) train with the same augmentation.
        config.augment, reason = resolve_augment(config.augment, splits.train, seed=0)
        if reason:
            notes.append(reason)
            clock.lap("augment_check")
    if splits.val is None and config.keep == "best" and not config.sklearn_head:
        notes = _with_keep_note(notes)
    notes += _skipped_notes(splits)
    for note in notes:
        log(wrapped(f"Plan: {note}."))
    if config.pixel_blend == "auto":  # resolved once, so a resumed run keeps the choice
        # The default recipe only: explicit regimes and phases compare networks.
        config.pixel_blend = "on" if (config.mode == "auto" and config.phases is None
                                      and config.prune is None
                                      and not config.sklearn_head) else "off"
    if not config.sklearn_head:
        plan = plan_phases(config, _steps_per_epoch(len(splits.train), runtime))
        config.phases = plan.phases
        notes += plan.reasons
        for reason in plan.reasons:
            log(wrapped(f"Plan: {reason}."))
    if kind == "train":
        atomic_write_text(out / "config.yaml", config.to_yaml())
    model = _build_run_model(config, runtime, len(splits.class_names))
    clock.lap("build_model")
    run = _Prepared(config, runtime, out, log, clock, splits, model, resume_point, notes=notes)
    if not config.sklearn_head:
        run.data_for_phase = _phase_data_factory(config, runtime, model, splits,
                                                 _steps_per_epoch(len(splits.train), runtime),
                                                 notes)
    return run


def _check_two_classes(splits: DataSplits, data: str | None) -> None:
    names = splits.class_names
    if len(names) < 2:
        where = f" in {data!r}" if data else ""
        found = f"one class ({names[0]!r})" if names else "no class"
        raise DataError(f"found {found}{where}: at least two are needed, one subfolder "
                        "(or label) per class.")


def _skipped(splits: DataSplits) -> dict[str, str]:
    """Every file ``on_bad_file='skip'`` left out, over all splits (path -> reason)."""
    skipped: dict[str, str] = {}
    for data in (splits.train, splits.val, splits.test):
        if data is not None:
            skipped.update(data.skipped)
    return skipped


def _skipped_notes(splits: DataSplits, shown: int = 3) -> list[str]:
    skipped = _skipped(splits)
    if not skipped:
        return []
    first = "; ".join(f"{path} ({reason})" for path, reason in list(skipped.items())[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return [f"{len(skipped)} unreadable file(s) left out ({hint('on_bad_file', 'skip')}): "
            f"{first}{more}; all listed in skipped_files.txt"]


def _with_keep_note(notes: list[str]) -> list[str]:
    """Say once that without validation data the run keeps its last epoch."""
    keep = "the run keeps the weights of its last epoch"
    merged = [f"{note}; {keep}" if note.startswith("validation: none") else note
              for note in notes]
    return merged if merged != notes else [*notes, f"no validation data: {keep}"]


class Stopwatch:
    """Wall time of each stage of a run, for ``run.json``'s breakdown.

    ``since_process_start`` adds what happened before :func:`fit` was called
    (importing TensorFlow, parsing flags), read from ``/proc`` on Linux.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.before_fit = _seconds_since_process_start()
        self.laps: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}
        self._last = self.started

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.started

    def split(self, lap: str, parts: dict[str, float]) -> None:
        """Record what lap ``lap`` was made of; the unnamed rest is ``other``."""
        parts = {name: round(seconds, 3) for name, seconds in parts.items()}
        parts["other"] = round(self.laps[lap] - sum(parts.values()), 3)
        self.parts[lap] = parts

    def breakdown(self) -> dict[str, float | None]:
        return {"before_fit": None if self.before_fit is None else round(self.before_fit, 3),
                **self.laps, "fit_total": round(self.total(), 3)}


def _seconds_since_process_start() -> float | None:
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _resumed(config: RunConfig) -> tuple[RunConfig, tuple[Path, TrainState] | None]:
    """On ``--resume``: the saved config of ``--output`` plus the recovery knobs given."""
    if not config.resume:
        return config, None
    if config.output is None:
        raise ConfigError("--resume needs --output DIR: the run to continue.")
    out = Path(config.output)
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(
            f"--resume: {str(out)!r} holds no config.yaml from an earlier run. Check "
            "--output, or drop --resume to start a new run there."
        )
    # A resumed run keeps its saved settings (same phases, schedule, data), except the
    # knobs one changes to recover from a failure, when given (whatever their value).
    fixes = {key: getattr(config, key) for key in RESUME_OVERRIDES if key in config.given}
    saved = load_yaml(saved_path)
    if "lr" in fixes and saved.get("phases"):
        scale = fixes["lr"] / saved["lr"]  # phases store resolved learning rates
        for phase in saved["phases"]:
            phase["lr"] = phase["lr"] * scale if phase.get("lr") else phase.get("lr")
    resumed = RunConfig.from_dict({**saved, **fixes, "resume": True, "output": str(out)})
    return resumed, latest_readable_state(out / "checkpoints")


def _output_dir(config: RunConfig, runtime, *, kind: str, resumed: bool) -> Path:
    """The run's directory: given, resumed, or a new numbered ``runs/<kind>N``."""
    if resumed:
        return Path(config.output)
    if config.output is None:
        if not runtime.is_chief:  # workers write to a throw-away directory anyway
            return Path("runs") / kind
        out = new_run_dir(kind)
        if kind == "train":
            mark_latest(out)
        return out
    out = Path(config.output)
    if kind == "train" and (list_checkpoints(out / "checkpoints")
                            or (out / "model.keras").exists()):
        raise ConfigError(
            f"Output directory {str(out)!r} already holds a run. Pass --resume to continue "
            "it, or choose another --output (or none: each run then gets a new "
            "runs/trainN); kerastl never overwrites a finished run."
        )
    return out


def _build_run_model(config: RunConfig, runtime, n_classes: int):
    """The model a run trains, built inside the strategy scope."""
    phases = config.phases or [Phase(config.mode, 1, mode=config.mode
                                     if config.mode in ("frozen", "scratch") else "frozen",
                                     bn_policy=config.bn_policy)]
    # The base is called with training=False unless some phase trains BatchNorm.
    trains_bn = any(p.bn_policy == "train" or p.mode == "scratch" for p in phases)
    first_mode = phases[0].mode
    with runtime.strategy.scope():
        return build_model(
            config.backbone, n_classes, **config.build_model_kwargs(),
            bn_policy="train" if trains_bn else "frozen",
            mode="scratch" if first_mode == "scratch" else "frozen",
        )


def _make_trainer(config: RunConfig, runtime, model, splits, out: Path, callbacks, log,
                  checkpoints: bool = True, step_hooks=()):
    return Trainer(
        model, runtime.strategy, task=config.task, optimizer=config.optimizer,
        schedule=config.schedule, weight_decay=config.weight_decay, momentum=config.momentum,
        label_smoothing=config.label_smoothing, warmup_fraction=config.warmup_fraction,
        class_weights=class_weights_for(config.class_weight, config.task, splits.train.labels,
                                        len(splits.class_names)),
        class_weight=config.class_weight, early_stopping=config.early_stopping,
        keep=config.keep, block_lr_decay=config.block_lr_decay,
        anchor_decay=config.anchor_decay, callbacks=callbacks,
        checkpoint_dir=inside_output(out, "checkpoints") if checkpoints else None,
        checkpoint_interval=config.checkpoint_interval, is_chief=runtime.is_chief,
        wrap_optimizer=lambda opt: loss_scale_optimizer(opt, runtime.precision),
        jit_compile=runtime.jit_compile, steps_per_execution=runtime.steps_per_execution,
        seed=config.seed, verbose=config.verbose if runtime.is_chief else 0, log=log,
        step_hooks=step_hooks, find_lr=suggest_lr,
    )


def _check_no_folders(config: RunConfig) -> None:
    folders = {key: getattr(config, key) for key in ("data", "val_data", "test_data")
               if getattr(config, key) is not None}
    if folders:
        raise ConfigError(
            f"fit() received splits= and data folders {folders}; pass one or the other."
        )


def _fit_sklearn(config, runtime, model, splits, out, clock, log):
    """``--head sklearn-KIND``: a scikit-learn head on frozen pooled features."""
    kind = config.sklearn_head
    log(f"Fitting a scikit-learn {kind} head on frozen {config.backbone} features.")
    classifier = SklearnClassifier.fit(model, splits.train, kind, image_size=config.image_size,
                                       batch_size=runtime.global_batch)
    classifier.save(inside_output(out, "sklearn_classifier"))
    evaluation, which = evaluation_split(splits)
    probs = classifier.predict_proba(evaluation)
    metrics = write_evaluation(out, evaluation.labels, probs, splits.class_names,
                               task=config.task)
    metrics["evaluated_on"] = which
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "labels.json", {"class_names": splits.class_names,
                                            "task": config.task,
                                            "image_size": config.image_size})
    clock.lap("train")
    seconds = clock.total()
    log(f"{kind} head: accuracy {metrics['accuracy']:.4f} on the {metrics['evaluated_on']} "
        f"split in {seconds:.1f} s. Load it with "
        f"kerastl.SklearnClassifier.load({str(out / 'sklearn_classifier')!r}).")
    return RunResult(out, classifier.extractor, [], metrics, splits.class_names, config,
                     seconds, [f"scikit-learn {kind} head on frozen features"])


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        # Same seed, same weights: TensorFlow's deterministic kernels (opt-in; they
        # cost throughput, see benchmarks/throughput.py).
        tf.config.experimental.enable_op_determinism()


def _resume_state(resume_point, log):
    if resume_point is None:
        return TrainState(), None
    checkpoint, state = resume_point
    log(f"Resuming from {checkpoint} (epoch {state.epoch}, phase {state.phase_index + 1}).")
    return state, checkpoint


def _steps_per_epoch(n_train: int, runtime) -> int:
    batch = runtime.global_batch
    steps = n_train // batch if runtime.drop_remainder else math.ceil(n_train / batch)
    if steps < 1:
        raise ConfigError(
            f"batch_size {batch} is larger than the {n_train} training images with "
            "drop_remainder; lower --batch-size."
        )
    return steps


def _phase_data_factory(config, runtime, model, splits, steps, notes):
    batch = runtime.global_batch
    seed = config.seed
    image_size = config.image_size
    val = (splits.val.batches(image_size, batch) if splits.val is not None else None)

    def image_data(phase: Phase, why: str) -> PhaseData:
        def train(epoch: int):
            # Per-epoch seeds: the order and augmentation of epoch e do not depend on
            # how many epochs this process has run, so a resumed run matches.
            epoch_seed = data_epoch_seed(seed, epoch)
            return splits.train.batches(
                image_size, batch, shuffle_seed=epoch_seed,
                augment=augmentation(config.augment, seed=epoch_seed) if config.augment else None,
                drop_remainder=runtime.drop_remainder,
            )

        def train_for_worker(epoch: int, context):
            epoch_seed = data_epoch_seed(seed, epoch)
            return splits.train.worker_batches(
                image_size, batch, context, shuffle_seed=epoch_seed,
                augment=augmentation(config.augment, seed=epoch_seed) if config.augment else None,
                drop_remainder=runtime.drop_remainder,
            )

        return PhaseData(model, train, val, steps, description=why,
                         train_for_worker=train_for_worker)

    def data_for_phase(phase: Phase) -> PhaseData:
        if phase.fit == "probe":  # fitted on un-augmented features, cached or not
            return _cached_phase(config, runtime, model, splits, batch, steps, notes)
        if phase.mode != "frozen":
            return image_data(phase, "images through the whole model")
        if config.feature_cache == "off":
            return image_data(phase, "feature cache off (--feature-cache off)")
        applies, reason = _cache_applies(model, phase)
        if not applies:
            why = f"feature cache not used: {reason}"
            notes.append(f"phase {phase.name!r}: {why}")
            return image_data(phase, why)
        # With augmentation: K augmented passes computed once, epoch e trains on e mod K.
        return _cached_phase(config, runtime, model, splits, batch, steps, notes,
                             augmented=bool(config.augment))

    return data_for_phase


def _cache_applies(model, phase: Phase) -> tuple[bool, str]:
    """Whether this frozen phase can train on cached features (e.g. no active dropout)."""
    # Checked in the phase's own regime: the previous phase may have unfrozen the base.
    set_regime(model, "frozen", bn_policy=phase.bn_policy, recompile=False)
    return cache_applies(model)


def _cached_phase(config, runtime, model, splits, batch, steps, notes, *,
                  augmented: bool = False):
    cache_dir = config.feature_cache_dir
    if cache_dir is not None and not Path(cache_dir).is_absolute():
        cache_dir = inside_output(Path(config.output), cache_dir)  # relative: inside the run
    cache = FeatureCache(cache_dir)
    augment = augmentation(config.augment, seed=config.seed) if augmented else None
    train, val, arrays = cached_feature_datasets(
        model, splits.train, splits.val, image_size=config.image_size, batch_size=batch,
        cache=cache, seed=config.seed, augment=augment,
        augment_passes=config.augment_passes if augmented else 0,
    )
    what = f"{config.augment_passes} augmented passes of " if augmented else ""
    note = f"head trained on {what}cached base features ({cache.explain()})"
    notes.append(note)
    with runtime.strategy.scope():
        head = head_model(model)
    # A whole epoch per compiled call: a head step on features takes about a
    # millisecond, less than calling into TensorFlow from Python (issue 11).
    return PhaseData(head, train, val, steps, description=note, arrays=lambda: arrays,
                     steps_per_execution=steps)


def _epoch_outputs(out: Path, state: TrainState, writer) -> None:
    write_history_csv(state.history, out / "history.csv")
    row = state.history[-1]
    with writer.as_default(step=row["epoch"]):
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                tf.summary.scalar(key, value)
    writer.flush()


def _train_parts(data_seconds: list[float], epochs: list[dict]) -> dict[str, float]:
    """Where the training time went: what ``run.json`` breaks ``train`` into.

    ``phase_data`` builds what each phase trains on (a cached phase's feature
    extraction); ``first_epochs`` are each phase's first epoch, which traces the
    step; ``epochs`` the rest.
    """
    first, later, seen = 0.0, 0.0, set()
    for row in epochs:
        if row["phase"] in seen:
            later += row.get("seconds", 0.0)
        else:
            seen.add(row["phase"])
            first += row.get("seconds", 0.0)
    return {"phase_data": sum(data_seconds), "first_epochs": first, "epochs": later}


def _cached_evaluation(config: RunConfig, splits, state: TrainState, served: list):
    """``(head, cached validation features)`` when they give the final model's output.

    A run evaluated on its validation split that ended on a frozen phase trained on
    cached features has the base features of those images already: the head on them
    is what the full model computes, without a second pass of the base (measured:
    most of the "evaluate" time of a cached frozen run, issue 11).
    """
    last = served[-1] if served else None
    if (splits.test is not None or last is None or last.arrays is None or last.val is None
            or config.prune is not None):
        return None
    final_phase = config.phases[-1].name
    if config.keep == "best" and state.best is not None and state.best["phase"] != final_phase:
        return None  # restored weights of an earlier phase, whose base may differ
    return last.model, last.val


def _final_outputs(out, config, runtime, model, splits, state, notes, clock, log,
                   cached=None, blend=None, network=None, probe_accuracy=None) -> dict:
    evaluation, which = evaluation_split(splits)
    parts = None
    if cached is not None:
        probs, labels = predict(*cached, label="Evaluating")
    elif network is not None:  # blended: the network's and the pixels' own outputs too
        probs, labels, parts = _blend_parts(model, evaluation.batches(
            config.image_size, runtime.global_batch))
    else:
        probs, labels = predict(model, evaluation.batches(config.image_size,
                                                          runtime.global_batch),
                                label="Evaluating")
    # The definition of val_loss: label smoothing and class weights as in training.
    loss_settings = {"label_smoothing": config.label_smoothing,
                     "class_weights": class_weights_for(config.class_weight, config.task,
                                                        splits.train.labels,
                                                        len(splits.class_names))}
    losses = evaluation_losses(config.task, labels, probs, **loss_settings)
    loss = losses.pop("loss")
    metrics = write_evaluation(out, labels, probs, splits.class_names, task=config.task,
                               loss=loss, extra=losses)
    metrics["evaluated_on"] = which
    check = _network_check(config, metrics, labels, parts, probe_accuracy, which,
                           network_probs=probs)
    if parts is not None:
        metrics["network_accuracy"] = check["network_accuracy"]
        metrics["pixel_accuracy"] = check["pixel_accuracy"]
    atomic_write_json(out / "metrics.json", metrics)
    clock.lap("evaluate")
    write_history_csv(state.history, out / "history.csv")
    plot_curves(state.history, out / "curves.png")
    with atomic_file(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    save_base_weights(model.get_layer("backbone"), out / RUN_WEIGHTS_FILE)
    atomic_write_json(out / "labels.json", {"class_names": splits.class_names,
                                            "task": config.task,
                                            "image_size": config.image_size,
                                            "loss": loss_settings})
    skipped = _skipped(splits)
    if skipped:
        atomic_write_text(out / "skipped_files.txt", "".join(
            f"{path}\t{reason}\n" for path, reason in skipped.items()))
    clock.lap("save_outputs")
    seconds = clock.total()
    facts = _run_facts(config, runtime, model, state, notes, clock, splits, blend)
    facts["network_check"] = check
    atomic_write_json(out / "run.json", facts)
    best = state.best or {}
    for note in _probe_notes(config, state):
        notes.append(note)
        log(f"Note: {note}")
    if check["status"] != "ok":
        log(f"Warning: {check['message']}. Fix: {check['fix']}.")
    log("\n" + summary_text({
        "backbone": config.backbone,
        "phases": [{"name": p.name, "epochs": p.epochs, "fit": p.fit} for p in config.phases],
        "epochs": sum(1 for row in state.history if row.get("phase") not in _probe_names(config)),
        "examples": {"train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test or [])},
        "best_val_accuracy": best.get("val_accuracy"),
        "best_epoch": epoch_in_phase(state.history, best.get("epoch")),
        "test_accuracy": metrics.get("accuracy"), "evaluated_on": which,
        "blended": parts is not None, "network_check": check,
        "test_loss": loss, "test_cross_entropy": losses.get("cross_entropy"),
        "label_smoothing": config.label_smoothing,
        "seconds": seconds, "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights), "output_dir": str(out),
    }))

    write_run_report(out, model, evaluation, probs, class_names=splits.class_names,
                     task=config.task, log=log)
    log(next_commands(out, config.test_data))
    return metrics


def _blend_parts(model, batches):
    """One pass: the blended output, and the network's and the pixel model's logits.

    Both parts are read from the blended model itself (``network_logits``,
    ``pixel_logits``), so no second copy of the network runs.
    """
    parts = [model.get_layer(f"{part}_{LOGITS}").output for part in ("network", "pixel")]
    both = keras.Model(model.inputs[0], keras.layers.Concatenate(dtype="float32")(
        [model.outputs[0], *parts]))
    joined, labels = predict(both, batches, label="Evaluating")
    probs, *logits = np.split(joined, 3, axis=1)
    # A sigmoid of logits has the arg-max and the 0.5 threshold of the part's own
    # activation: enough for accuracy.
    from scipy.special import expit  # no overflow warning on large logits

    return probs, labels, tuple(expit(part) for part in logits)


def _network_check(config, metrics, labels, parts, probe_accuracy, which,
                   network_probs=None) -> dict:
    """``run.json``'s ``network_check``: the network alone against chance, probe, pixels."""
    def accuracy(probs) -> float:
        hits, total = correct_count(config.task, labels, probs)
        return float(hits) / max(float(total), 1.0)

    network, pixels = (metrics["accuracy"], None) if parts is None else map(accuracy, parts)
    if parts is not None:
        network_probs = parts[0]
    balanced, classes = None, 0
    if config.task != "multilabel" and network_probs is not None:
        from sklearn.metrics import balanced_accuracy_score

        probs = np.asarray(network_probs)
        predicted = (np.argmax(probs, axis=1) if probs.shape[1] > 1
                     else (probs[:, 0] >= 0.5).astype(np.int64))
        classes = max(2, probs.shape[1])
        with warnings.catch_warnings():  # a class absent from the labels: still a score
            warnings.simplefilter("ignore")
            balanced = float(balanced_accuracy_score(
                np.asarray(labels).reshape(-1).astype(np.int64), predicted))
    return check_network(
        network_accuracy=network, chance=chance_accuracy(config.task, labels),
        examples=len(labels), probe_accuracy=probe_accuracy, pixel_accuracy=pixels,
        held_out=which in ("test", "validation"),
        pretrained=has_pretrained_weights(config.weights),
        phase_modes=[(p.mode, p.bn_policy) for p in config.phases if p.fit == "train"],
        balanced_accuracy=balanced, classes=classes)


def _probe_accuracy(state: TrainState, probe_facts: dict) -> float | None:
    """The run's linear probe: on validation, else cross-validated on training images."""
    rows = [row for row in state.history if row.get("phase") == "probe"]
    if rows and "val_accuracy" in rows[-1]:
        return float(rows[-1]["val_accuracy"])
    return probe_facts.get("cv_accuracy")


def _probe_names(config: RunConfig) -> set[str]:
    return {p.name for p in config.phases if p.fit == "probe"}


def next_commands(out: Path, test_data: str | None) -> str:
    """The closing lines: where the outputs are and the commands that use them.

    Example:
        >>> print(next_commands(Path("runs/train3"), "flowers/test"))
        Outputs written to runs/train3
        Next:
          python -m kerastl.evaluate runs/train3 flowers/test --output runs/train3/evaluation
          python -m kerastl.predict runs/train3 IMAGE_OR_FOLDER --output predictions.csv
    """
    run, data = _shell_path(out), _shell_path(test_data) if test_data else "TEST_FOLDER"
    return "\n".join([
        f"Outputs written to {run}", "Next:",
        f"  python -m kerastl.evaluate {run} {data} --output {_shell_path(out / 'evaluation')}",
        f"  python -m kerastl.predict {run} IMAGE_OR_FOLDER --output predictions.csv"])


def _shell_path(path) -> str:
    import shlex

    return shlex.quote(str(path))


def evaluation_split(splits: DataSplits) -> tuple[Any, str]:
    """What ``metrics.json`` reports on: the test split, else validation, else training.

    Training accuracy says little about new images; the name says so in the report.
    """
    if splits.test is not None:
        return splits.test, "test"
    if splits.val is not None:
        return splits.val, "validation"
    return splits.train, "training (no held-out data: not an estimate for new images)"


def _probe_notes(config: RunConfig, state: TrainState) -> list[str]:
    """How the run compares with its own linear probe, on validation."""
    probes = [r for r in state.history if r.get("phase") == "probe" and "val_accuracy" in r]
    if not probes or not state.history:
        return []
    probe = probes[-1]["val_accuracy"]
    final = (state.best or {}).get("val_accuracy") if config.keep == "best" else \
        state.history[-1].get("val_accuracy")
    if final is None:
        return []
    kept = (state.best or {}).get("phase") if config.keep == "best" else "last epoch"
    if final < probe:
        return [f"this run ends below its own linear probe on validation ({final:.4f} < "
                f"{probe:.4f}); --keep best would have kept the probe"]
    return [f"linear probe val_accuracy {probe:.4f}; the run keeps {kept!r} at {final:.4f}"]


def _run_facts(config, runtime, model, state, notes, clock, splits, blend=None) -> dict:
    return {
        "versions": {
            "kerastl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "runtime": runtime.describe(),
        "seconds": round(clock.total(), 2),
        "seconds_breakdown": clock.breakdown(),
        "train_breakdown": clock.parts.get("train"),
        "epochs": state.epoch,
        "examples": {"train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test or [])},
        "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights),
        "best_epoch": state.best,
        "pixel_blend": blend,
        "found_learning_rates": state.lrs,
        # As printed; an evaluation of this run's model shows it in its report.
        "unfreeze_plan": None if getattr(model, "plan", None) is None else str(model.plan),
        "notes": notes,
    }

"""Everything a run needs before its first step: the resolved run, the output folder,
the model, the trainer, and the data each phase trains on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras  # noqa: E402

from ..config.phases import Phase
from ..config.schema import RunConfig
from ..core import backend as _backend  # noqa: F401
from ..core.console import wrapped
from ..core.files import atomic_write_text, inside_output
from ..core.stopwatch import Stopwatch
from ..data.augmentation import augmentation
from ..data.image_data import epoch_seed as data_epoch_seed
from ..data.splits import DataSplits
from ..models.build import head_model
from ..models.feature_cache import FeatureCache
from ..models.features import cache_applies, cached_feature_datasets
from ..models.freezing import set_regime
from ..outputs.run_dir import RunDir
from ..training.checkpoints import TrainState
from ..training.lr_range_test import suggest_lr
from ..training.phase_data import PhaseData
from ..training.precision import loss_scale_optimizer
from ..training.runtime import Runtime
from ..training.trainer import Trainer
from .resolve import resolve_run
from .run_spec import ResolvedRun


@dataclass
class PreparedRun:
    """A run set up and ready to train: what :func:`fit` and :func:`lr_find` share.

    Attributes:
        resolved: ResolvedRun. Every choice of the run (read-only).
        out: Path. Where this process writes.
        log: callable. Prints on the chief when the run is verbose.
        clock: Stopwatch.
        splits: DataSplits.
        model: keras.Model. Built in the strategy scope, in the first phase's regime.
        data_for_phase: callable. A :class:`Phase` to the data it trains on.
        notes: list of str. The resolved notes, and those phases add as they start.
    """

    resolved: ResolvedRun
    out: Path
    log: Callable[..., None]
    clock: Stopwatch
    splits: DataSplits
    model: keras.Model
    data_for_phase: Callable[[Phase], PhaseData] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> RunConfig:
        """The resolved, read-only config (``config.yaml``)."""
        return self.resolved.config

    @property
    def runtime(self) -> Runtime:
        return self.resolved.runtime


def prepare_run(config, splits, overrides, *, kind: str) -> PreparedRun:
    """Resolve the run, record it, build the model and its per-phase data."""
    clock = Stopwatch()
    resolved, splits = resolve_run(config, splits, overrides=overrides, kind=kind, clock=clock)
    out, runtime = resolved.output.writes_to, resolved.runtime
    verbose = bool(resolved.config.verbose and runtime.is_chief)
    log = print if verbose else (lambda *_: None)
    log(runtime.summary())
    for note in resolved.notes:
        log(wrapped(f"Plan: {note}."))
    if kind == "train":
        atomic_write_text(RunDir(out).config_file, resolved.config.to_yaml())
    model = resolved.model.build(runtime)
    clock.lap("build_model")
    run = PreparedRun(resolved, out, log, clock, splits, model, notes=list(resolved.notes))
    if not resolved.recipe.sklearn_head:
        run.data_for_phase = _phase_data_factory(resolved, model, splits, run.notes)
    return run


def make_trainer(run: PreparedRun, callbacks, checkpoints: bool = True,
                 step_hooks=()) -> Trainer:
    """The trainer of a prepared run: its optimizer spec, runtime and checkpoints."""
    runtime = run.runtime
    return Trainer(
        run.model, runtime.strategy, **run.resolved.optimizer.trainer_kwargs(),
        callbacks=callbacks,
        checkpoint_dir=inside_output(run.out, "checkpoints") if checkpoints else None,
        is_chief=runtime.is_chief,
        wrap_optimizer=lambda opt: loss_scale_optimizer(opt, runtime.precision),
        jit_compile=runtime.jit_compile, steps_per_execution=runtime.steps_per_execution,
        log=run.log, step_hooks=step_hooks, find_lr=suggest_lr,
    )


def resume_state_of(resume_point, log):
    if resume_point is None:
        return TrainState(), None
    checkpoint, state = resume_point
    log(f"Resuming from {checkpoint} (epoch {state.epoch}, phase {state.phase_index + 1}).")
    return state, checkpoint


def _phase_data_factory(resolved: ResolvedRun, model, splits, notes: list[str]):
    plan = resolved.data
    batch, seed, image_size, steps = (plan.batch_size, plan.seed, plan.image_size,
                                      plan.steps_per_epoch)
    augment_names = plan.augment
    val = (splits.val.batches(image_size, batch) if splits.val is not None else None)

    def image_data(phase: Phase, why: str) -> PhaseData:
        def train(epoch: int):
            # Per-epoch seeds: the order and augmentation of epoch e do not depend on
            # how many epochs this process has run, so a resumed run matches.
            epoch_seed = data_epoch_seed(seed, epoch)
            return splits.train.batches(
                image_size, batch, shuffle_seed=epoch_seed,
                augment=augmentation(augment_names, seed=epoch_seed) if augment_names else None,
                drop_remainder=plan.drop_remainder,
            )

        def train_for_worker(epoch: int, context):
            epoch_seed = data_epoch_seed(seed, epoch)
            return splits.train.worker_batches(
                image_size, batch, context, shuffle_seed=epoch_seed,
                augment=augmentation(augment_names, seed=epoch_seed) if augment_names else None,
                drop_remainder=plan.drop_remainder,
            )

        return PhaseData(model, train, val, steps, description=why,
                         train_for_worker=train_for_worker,
                         val_for_worker=None if splits.val is None else (
                             lambda context: splits.val.worker_batches(image_size, batch,
                                                                       context)))

    def data_for_phase(phase: Phase) -> PhaseData:
        if phase.fit == "probe":  # fitted on un-augmented features, cached or not
            return _cached_phase(resolved, model, splits, notes)
        if phase.mode != "frozen":
            return image_data(phase, "images through the whole model")
        if plan.feature_cache == "off":
            return image_data(phase, "feature cache off (--feature-cache off)")
        applies, reason = _cache_applies(model, phase)
        if not applies:
            why = f"feature cache not used: {reason}"
            notes.append(f"phase {phase.name!r}: {why}")
            return image_data(phase, why)
        # With augmentation: K augmented passes computed once, epoch e trains on e mod K.
        return _cached_phase(resolved, model, splits, notes, augmented=bool(augment_names))

    return data_for_phase


def _cache_applies(model, phase: Phase) -> tuple[bool, str]:
    """Whether this frozen phase can train on cached features (e.g. no active dropout)."""
    # Checked in the phase's own regime: the previous phase may have unfrozen the base.
    set_regime(model, "frozen", bn_policy=phase.bn_policy, recompile=False)
    return cache_applies(model)


def _cached_phase(resolved: ResolvedRun, model, splits, notes: list[str], *,
                  augmented: bool = False):
    plan = resolved.data
    cache_dir = plan.feature_cache_dir
    if cache_dir is not None and not Path(cache_dir).is_absolute():
        cache_dir = inside_output(resolved.output.directory, cache_dir)  # inside the run
    cache = FeatureCache(cache_dir)
    augment = augmentation(plan.augment, seed=plan.seed) if augmented else None
    shares: list[str] = []
    train, val, arrays = cached_feature_datasets(
        model, splits.train, splits.val, image_size=plan.image_size,
        batch_size=plan.batch_size, cache=cache, seed=plan.seed, augment=augment,
        augment_passes=plan.augment_passes if augmented else 0,
        strategy=resolved.runtime.strategy, log=shares,
    )
    steps = plan.steps_per_epoch
    what = f"{plan.augment_passes} augmented passes of " if augmented else ""
    note = f"head trained on {what}cached base features ({cache.explain()})"
    note += "".join(f"; {line}" for line in shares)
    notes.append(note)
    with resolved.runtime.strategy.scope():
        head = head_model(model)
    # A whole epoch per compiled call: a head step on features takes about a
    # millisecond, less than calling into TensorFlow from Python (issue 11).
    return PhaseData(head, train, val, steps, description=note, arrays=lambda: arrays,
                     steps_per_execution=steps)

"""Everything a run needs before its first step: resolved config, runtime, output folder,
data, model, trainer, and the data each phase trains on."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..config.phases import Phase
from ..config.schema import RESUME_OVERRIDES, RunConfig, load_yaml
from ..core import backend as _backend  # noqa: F401
from ..core.console import hint, wrapped
from ..core.errors import ConfigError, DataError
from ..core.files import (
    atomic_write_text,
    inside_output,
    mark_latest,
    new_run_dir,
)
from ..data.augmentation import augmentation
from ..data.image_data import epoch_seed as data_epoch_seed
from ..data.mirror import resolve_augment
from ..data.splits import DataSplits, load_splits
from ..models.build import build_model, head_model
from ..models.feature_cache import FeatureCache
from ..models.features import cache_applies, cached_feature_datasets
from ..models.freezing import set_regime
from ..training.checkpoints import TrainState, latest_readable_state, list_checkpoints
from ..training.losses import class_weights_for
from ..training.lr_range_test import suggest_lr
from ..training.phase_data import PhaseData
from ..training.precision import loss_scale_optimizer
from ..training.runtime import setup_runtime, warn_if_local_data, worker_output_dir
from ..training.trainer import Trainer
from .plan import plan_phases
from .resolve import native_size, resolve_config
from .run_outputs import (
    skipped_by_reason,
)


@dataclass
class PreparedRun:
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


def decoded_memory_setting(config: RunConfig) -> str:
    """``config.decoded_memory``, with ``auto`` keeping nothing where the pixels are read
    once after the check: a frozen base without augmentation trains on cached features,
    so keeping N * size * size * 3 bytes would only save one decode pass (on every core)
    and make the run's memory grow with its data."""
    reads_once = ((config.mode == "frozen" or config.sklearn_head) and not config.augment
                  and config.feature_cache != "off" and config.pixel_blend != "on"
                  and config.phases is None)
    return "0" if config.decoded_memory == "auto" and reads_once else config.decoded_memory


def prepare_run(config, splits, overrides, *, kind: str) -> PreparedRun:
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
                             decoded_memory=decoded_memory_setting(config))
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
    run = PreparedRun(config, runtime, out, log, clock, splits, model, resume_point, notes=notes)
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


def _skipped_notes(splits: DataSplits, shown: int = 3) -> list[str]:
    skipped = skipped_by_reason(splits)
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


def make_trainer(config: RunConfig, runtime, model, splits, out: Path, callbacks, log,
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


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        # Same seed, same weights: TensorFlow's deterministic kernels (opt-in; they
        # cost throughput, see benchmarks/throughput.py).
        tf.config.experimental.enable_op_determinism()


def resume_state_of(resume_point, log):
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

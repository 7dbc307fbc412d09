"""Resolve a run once: every derived default and every ``auto`` decided, then frozen.

What the user gave (a :class:`~kerastl.config.schema.RunConfig` from flags, YAML or a
notebook) still has holes that depend on other values, on files, on the device and
on the data: no data means the shipped samples, no backbone means the one a weights
file was saved from, no image size means the size those weights were trained at,
``mode="auto"`` means phases sized by the number of images. :func:`resolve_config`
fills in what needs neither data nor device; :func:`resolve_run` does that, sets up
the runtime, reads the data and returns a read-only
:class:`~kerastl.recipes.run_spec.ResolvedRun`, which :func:`kerastl.fit` and
:func:`kerastl.lr_find` use and ``config.yaml`` records.

Example:
    >>> from kerastl.config.schema import RunConfig
    >>> config = resolve_config(RunConfig(backbone="mobilenetv2", image_size=32, data="x"))
    >>> config.backbone, config.image_size
    ('MobileNetV2', 32)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..config.choices import MULTI_DEPTH_HEAD
from ..config.phases import Phase
from ..config.schema import (
    DEFAULT_BACKBONE,
    RESUME_OVERRIDES,
    RunConfig,
    csv_list,
    load_yaml,
)
from ..config.validation import validate
from ..core import backend as _backend  # noqa: F401
from ..core.console import hint
from ..core.errors import ConfigError, DataError
from ..core.files import mark_latest, new_run_dir
from ..core.stopwatch import Stopwatch
from ..data.images import native_image_side_of
from ..data.mirror import resolve_augment
from ..data.samples import sample_defaults
from ..data.sources import native_image_side
from ..data.splits import DataSplits, load_splits
from ..models.backbones import Backbone, get_backbone, registry_key
from ..models.weights import has_pretrained_weights, weights_record
from ..outputs.run_dir import RunDir
from ..training.checkpoints import latest_readable_state, list_checkpoints
from ..training.losses import class_weights_for
from ..training.runtime import Runtime, setup_runtime, warn_if_local_data, worker_output_dir
from .plan import plan_phases
from .run_spec import DataPlan, ModelSpec, OptimizerSpec, OutputPlan, Recipe, ResolvedRun


def resolve_run(config: RunConfig | None, splits: DataSplits | None = None, *,
                overrides: dict[str, Any] | None = None, kind: str = "train",
                clock: Stopwatch | None = None) -> tuple[ResolvedRun, DataSplits]:
    """Every choice of a run, made once: what :func:`kerastl.fit` trains by.

    In order: the saved config of a run to resume (``--resume``), the fields
    (:func:`resolve_config`), the runtime (strategy, precision, batch; seeds set
    after it), the output folder, the data (read here: the plan depends on it),
    augmentation (``auto``: the mirror check), the pixel blend, the phases
    (:func:`~kerastl.recipes.plan.plan_phases`), the class weights.

    What only the data layer can know is decided there, once, as the data is read
    (``val_split="auto"``'s share, the decoded-memory budget), and a phase's
    ``lr="auto"`` at the start of that phase.

    Args:
        config: RunConfig, optional. What the user gave; defaults to ``RunConfig()``.
        splits: DataSplits, optional. In-memory data instead of the data folders.
        overrides: dict, optional. Field values replacing those of ``config``.
        kind: str. ``"train"`` or ``"lr_find"`` (new folders are ``runs/<kind>N``).
        clock: Stopwatch, optional. Gets the ``setup``, ``load_data`` and
            ``augment_check`` laps.

    Returns:
        ``(ResolvedRun, DataSplits)``: the frozen run and the data it reads.

    Raises:
        KerastlError: a bad value, folder or file, quoting it; nothing already in the
            output folder is touched.
    """
    clock = clock or Stopwatch()
    config = (config or RunConfig()).replace(**(overrides or {}))
    if splits is not None:
        _check_no_folders(config)
    config, resume_point = _resumed(config) if kind == "train" else (config, None)
    config, backbone = _resolved_fields(
        config, splits is not None, lambda resolved: native_size(resolved, splits))
    runtime = setup_runtime(config.strategy, config.precision, batch_size=config.batch_size,
                            jit_compile=config.jit_compile,
                            steps_per_execution=config.steps_per_execution,
                            backbone=backbone, intra_op_threads=config.intra_op_threads,
                            image_size=config.image_size,
                            trains_base=config.mode != "frozen" and not config.sklearn_head)
    _seed_everything(config.seed, config.deterministic)  # after TensorFlow's threads are set
    for path in (config.data, config.val_data, config.test_data):
        if path:
            warn_if_local_data(path, runtime)
    config.output = str(_output_dir(config, runtime, kind=kind,
                                    resumed=resume_point is not None or config.resume))
    clock.lap("setup")
    if splits is None:
        splits = load_splits(config.data, val_dir=config.val_data, test_dir=config.test_data,
                             val_split=config.val_split, seed=config.seed,
                             on_bad_file=config.on_bad_file, image_size=config.image_size,
                             check_files=config.check_files,
                             decoded_memory=decoded_memory_setting(config))
    clock.lap("load_data")
    _check_two_classes(splits, config.data)
    notes = [*splits.notes, *_resolve_augment(config, splits, clock)]
    if splits.val is None and config.keep == "best" and not config.sklearn_head:
        notes = _with_keep_note(notes)
    notes += _skipped_notes(splits)
    if config.pixel_blend == "auto":  # resolved once, so a resumed run keeps the choice
        # The default recipe only: explicit regimes and phases compare networks.
        config.pixel_blend = "on" if (config.mode == "auto" and config.phases is None
                                      and config.prune is None
                                      and not config.sklearn_head) else "off"
    steps = steps_per_epoch(len(splits.train), runtime)
    reasons: list[str] = []
    if not config.sklearn_head:
        plan = plan_phases(config, steps)
        config.phases, reasons = plan.phases, plan.reasons
    frozen = config.frozen()
    run = ResolvedRun(
        config=frozen, backbone=backbone, runtime=runtime,
        data=_data_plan(frozen, runtime, steps),
        model=_model_spec(frozen, backbone, len(splits.class_names)),
        optimizer=_optimizer_spec(frozen, runtime, splits),
        recipe=Recipe(tuple(frozen.phases or ()), frozen.pixel_blend == "on", frozen.prune,
                      frozen.sklearn_head),
        output=OutputPlan(Path(frozen.output), worker_output_dir(frozen.output, runtime)),
        resume_point=resume_point, notes=(*notes, *reasons))
    return run, splits


def _resolve_augment(config: RunConfig, splits: DataSplits, clock: Stopwatch) -> list[str]:
    """``augment="auto"`` decided on the training images; the note says why."""
    if config.sklearn_head:
        config.augment = [name for name in config.augment if name != "auto"]  # never augments
        return []
    # Seed 0, not the run's: the decision depends on the data alone, so runs that
    # differ only in seed (draws, --compare) train with the same augmentation.
    config.augment, reason = resolve_augment(config.augment, splits.train, seed=0)
    if not reason:
        return []
    clock.lap("augment_check")
    return [reason]


def _data_plan(config: RunConfig, runtime: Runtime, steps: int) -> DataPlan:
    return DataPlan(
        image_size=config.image_size, batch_size=runtime.global_batch,
        drop_remainder=runtime.drop_remainder, steps_per_epoch=steps, seed=config.seed,
        augment=tuple(config.augment), augment_passes=config.augment_passes,
        feature_cache=config.feature_cache, feature_cache_dir=config.feature_cache_dir)


def _model_spec(config: RunConfig, backbone: Backbone, num_classes: int) -> ModelSpec:
    phases = config.phases or [Phase(config.mode, 1, mode=config.mode
                                     if config.mode in ("frozen", "scratch") else "frozen",
                                     bn_policy=config.bn_policy)]
    # The base is called with training=False unless some phase trains BatchNorm.
    trains_bn = any(p.bn_policy == "train" or p.mode == "scratch" for p in phases)
    return ModelSpec(backbone, num_classes, config.build_model_kwargs(),
                     bn_policy="train" if trains_bn else "frozen",
                     first_mode="scratch" if phases[0].mode == "scratch" else "frozen",
                     multi_depth=config.multi_depth)


def _optimizer_spec(config: RunConfig, runtime: Runtime, splits: DataSplits) -> OptimizerSpec:
    weights = None if config.sklearn_head else class_weights_for(
        config.class_weight, config.task, splits.train.labels, len(splits.class_names))
    return OptimizerSpec(
        task=config.task, optimizer=config.optimizer, schedule=config.schedule,
        weight_decay=config.weight_decay, momentum=config.momentum,
        label_smoothing=config.label_smoothing, warmup_fraction=config.warmup_fraction,
        class_weight=config.class_weight,
        class_weights=None if weights is None else tuple(float(w) for w in weights),
        early_stopping=config.early_stopping, keep=config.keep,
        block_lr_decay=config.block_lr_decay, anchor_decay=config.anchor_decay,
        checkpoint_interval=config.checkpoint_interval, seed=config.seed,
        verbose=config.verbose if runtime.is_chief else 0)


def decoded_memory_setting(config: RunConfig) -> str:
    """``config.decoded_memory``, with ``auto`` keeping nothing where the pixels are read
    once after the check: a frozen base without augmentation trains on cached features,
    so keeping N * size * size * 3 bytes would only save one decode pass (on every core)
    and make the run's memory grow with its data."""
    reads_once = ((config.mode == "frozen" or config.sklearn_head) and not config.augment
                  and config.feature_cache != "off" and config.pixel_blend != "on"
                  and config.phases is None)
    return "0" if config.decoded_memory == "auto" and reads_once else config.decoded_memory


def steps_per_epoch(n_train: int, runtime: Runtime) -> int:
    """Optimizer steps in one pass over ``n_train`` images at the runtime's batch."""
    batch = runtime.global_batch
    steps = n_train // batch if runtime.drop_remainder else math.ceil(n_train / batch)
    if steps < 1:
        raise ConfigError(
            f"batch_size {batch} is larger than the {n_train} training images with "
            "drop_remainder; lower --batch-size."
        )
    return steps


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


def _check_two_classes(splits: DataSplits, data: str | None) -> None:
    names = splits.class_names
    if len(names) < 2:
        where = f" in {data!r}" if data else ""
        found = f"one class ({names[0]!r})" if names else "no class"
        raise DataError(f"found {found}{where}: at least two are needed, one subfolder "
                        "(or label) per class.")


def _skipped_notes(splits: DataSplits, shown: int = 3) -> list[str]:
    skipped = splits.skipped()
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


def _resumed(config: RunConfig) -> tuple[RunConfig, tuple[Path, Any] | None]:
    """On ``--resume``: the saved config of ``--output`` plus the recovery knobs given."""
    if not config.resume:
        return config, None
    if config.output is None:
        raise ConfigError("--resume needs --output DIR: the run to continue.")
    out = Path(config.output)
    saved_path = RunDir(out).config_file
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


def _output_dir(config: RunConfig, runtime: Runtime, *, kind: str, resumed: bool) -> Path:
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


def resolve_config(config: RunConfig, *, in_memory_data: bool = False,
                   native_size: Callable[[RunConfig], int | None] | None = None
                   ) -> RunConfig:
    """A validated copy of ``config`` with every derived default filled in.

    * no ``data`` (and ``in_memory_data`` False): the shipped ``data_samples/``
      and their source backbone;
    * ``weights`` ``"none"``/``None`` are the same; ``mode="scratch"`` means
      random initialisation;
    * no ``backbone``: the one a weights file was saved from (its kerastl
      ``config.yaml`` or JSON record), else ``MobileNetV2``; names in any case;
    * no ``image_size``: the size those weights were trained at, else the
      backbone's default size; with ``mode="auto"`` and no pretrained weights
      (trained from scratch), the images' own side from ``native_size(config)``,
      within the backbone's minimum and default sizes.

    These are the choices that need no data and no device;
    :func:`resolve_run` makes the rest.

    Args:
        config: RunConfig. What the user gave; it is not changed.
        in_memory_data: bool. The data comes as arrays (no ``data`` folder).
        native_size: callable, optional. Returns the images' own side; only
            called when a from-scratch run needs it (it reads file headers).

    Returns:
        A new :class:`RunConfig`, with the same ``given`` fields.

    Raises:
        ConfigError: a value outside its choices or range, quoting it.
    """
    return _resolved_fields(config, in_memory_data, native_size)[0]


def _resolved_fields(config: RunConfig, in_memory_data: bool,
                     native_size: Callable[[RunConfig], int | None] | None
                     ) -> tuple[RunConfig, Backbone]:
    resolved = config.replace()
    resolved.given = config.given
    resolved.weights = _none_weights(resolved.weights)
    if resolved.data is None and not in_memory_data:
        for key, value in sample_defaults(
                backbone=resolved.backbone, weights=resolved.weights,
                val_data=resolved.val_data, test_data=resolved.test_data).items():
            setattr(resolved, key, value)
    backbone = _backbone_of(resolved)
    resolved.backbone = backbone.name
    if resolved.image_size is None:
        resolved.image_size = _default_image_size(resolved, backbone, native_size)
    if resolved.mode == "scratch" and resolved.phases is None:
        resolved.weights = None  # scratch means random initialisation
    if _multi_depth_by_default(resolved):
        resolved.head = MULTI_DEPTH_HEAD
    # A list, whatever wrote it: YAML `augment: auto` or `augment:` (null) included.
    if resolved.augment is None or isinstance(resolved.augment, str):
        resolved.augment = csv_list(resolved.augment or "")
    if resolved.mode == "frozen" and "augment" not in resolved.given:
        # A frozen base computes the same features every epoch unless augmentation
        # runs before it: without it they are computed once and cached.
        resolved.augment = []
    if resolved.phases is not None:
        resolved.phases = [p if isinstance(p, Phase) else Phase(**p)
                           for p in resolved.phases]
    validate(resolved)
    return resolved, backbone


def _backbone_of(config: RunConfig) -> Backbone:
    """The registry record of the run's backbone; a weights file's record fills gaps.

    One lookup: a weights file's backbone is looked up only when none was given or
    it names the same one."""
    record = weights_record(config.weights)
    saved_name = record["backbone"] if record is not None else None
    if saved_name is not None and (not config.backbone
                                   or registry_key(config.backbone) == registry_key(saved_name)):
        if "backbone_kwargs" not in config.given:
            config.backbone_kwargs = dict(record.get("backbone_kwargs") or {})
        if config.image_size is None and record.get("input_size"):
            config.image_size = int(record["input_size"])
        return get_backbone(saved_name)
    return get_backbone(config.backbone or DEFAULT_BACKBONE)


def _multi_depth_by_default(config: RunConfig) -> bool:
    """Whether ``auto`` fine-tunes from the multi-depth probe: no head given, pretrained
    weights, and nothing asked that the multi-depth head cannot be (phases, a hidden
    Dense layer, dropout or a head norm, BatchNorm in training mode, pruning).

    Why: MEASURED on the transfer suite's validation images, 3 seeds: fine-tuned from
    the multi-depth probe, the network beat the one fine-tuned from the last-layer probe
    on six of eight tasks (transfer_suite_multidepth_ft.json), and with the pixel blend
    it is above pixels on every task without a validation split of its own
    (benchmarks/blend_weight.py, blend_weight_multidepth.json).
    """
    return (config.mode == "auto" and "head" not in config.given
            and has_pretrained_weights(config.weights) and config.phases is None
            and not config.dense_units and config.bn_policy == "frozen"
            and config.prune is None and not {"dropout", "head_norm"} & config.given)


def _none_weights(weights: Any) -> Any:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    return str(weights)


def _default_image_size(config: RunConfig, backbone: Backbone,
                        native_size: Callable[[RunConfig], int | None] | None) -> int:
    from_scratch = (config.mode == "auto" and config.phases is None
                    and not has_pretrained_weights(config.weights))
    own = native_size(config) if from_scratch and native_size is not None else None
    if not own:
        return backbone.default_size
    # Nothing was trained at a size: the images' own, within what the net accepts.
    return min(max(int(own), backbone.min_size), backbone.default_size)


def native_size(config: RunConfig, splits: DataSplits | None) -> int | None:
    """The training images' own side (file headers, or the arrays' shape), or None."""
    if splits is not None:
        images = splits.train.images
        if images is not None:
            return int(min(images.shape[1:3]))
        return native_image_side_of(splits.train.files or [])
    return native_image_side(config.data) if config.data else None

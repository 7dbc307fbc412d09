"""A whole run: data → runtime → model → phases → outputs. What the CLI calls.

Example:
    >>> import kerastl
    >>> result = kerastl.fit(kerastl.RunConfig(epochs=2, output="runs/demo"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from . import _backend  # noqa: F401
from .checkpoints import TrainState, latest_readable_state, list_checkpoints
from .config import Phase, RunConfig, load_yaml
from .data import DataSplits
from .data import epoch_seed as data_epoch_seed
from .errors import ConfigError
from .freezing import count_params
from .model import build_model
from .training import PhaseData, Trainer, evaluation_losses, predict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BACKBONE = "MobileNetV2"
RESUME_OVERRIDES = ("lr", "precision", "early_stopping")
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


# ------------------------------------------------------------------ defaults
def data_samples_dir() -> Path:
    """The shipped ``data_samples/`` folder (``$KERASTL_DATA_SAMPLES`` overrides)."""
    return Path(os.environ.get("KERASTL_DATA_SAMPLES", REPO_ROOT / "data_samples"))


def apply_sample_defaults(config: RunConfig) -> RunConfig:
    """With no ``--data``, train on ``data_samples/`` from the shipped source backbone."""
    if config.data is not None:
        return config
    root = data_samples_dir()
    fashion = root / "fashion"
    if not (fashion / "train").is_dir():
        raise ConfigError(
            f"No --data given and the shipped samples are missing at {str(fashion)!r}. "
            "Pass --data DIR (a folder of class subfolders), or set KERASTL_DATA_SAMPLES."
        )
    config.data = str(fashion / "train")
    config.val_data = config.val_data or _existing(fashion / "val")
    config.test_data = config.test_data or _existing(fashion / "test")
    source = _source_backbone(root)
    if source and config.backbone is None and config.weights == "imagenet":
        # The shipped source backbone: pretrained by kerastl on the other five
        # Fashion-MNIST classes (scripts/pretrain_source.py), so the job runs offline.
        config.backbone = source["backbone"]
        config.weights = str(root / "source" / source["weights_file"])
        config.weights_hash = source.get("weights_sha256")
        config.backbone_kwargs = config.backbone_kwargs or dict(source.get("backbone_kwargs", {}))
        config.image_size = config.image_size or int(source["input_size"])
    return config


def _existing(path: Path) -> str | None:
    return str(path) if path.is_dir() else None


def _source_backbone(root: Path) -> dict | None:
    for meta in sorted((root / "source").glob("*.json")):
        info = json.loads(meta.read_text())
        if "backbone" in info and "weights_file" in info:
            return info
    return None


# ------------------------------------------------------------------ output directory
def _prepare_output(config: RunConfig) -> tuple[Path, RunConfig, tuple[Path, TrainState] | None]:
    """Create the output directory; on resume reload its config and last checkpoint."""
    out = Path(config.output)
    checkpoints = out / "checkpoints"
    if config.resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise ConfigError(
                f"--resume: {str(out)!r} holds no config.yaml from an earlier run. Check "
                "--output, or drop --resume to start a new run there."
            )
        # A resumed run keeps its saved settings (same phases, schedule, data), except
        # the knobs one changes to recover from a failure, when given explicitly.
        defaults = RunConfig()
        fixes = {key: getattr(config, key) for key in RESUME_OVERRIDES
                 if getattr(config, key) != getattr(defaults, key)}
        saved_values = load_yaml(saved)
        if "lr" in fixes and saved_values.get("phases"):
            scale = fixes["lr"] / saved_values["lr"]  # phases stored resolved lrs
            for phase in saved_values["phases"]:
                phase["lr"] = phase["lr"] * scale if phase.get("lr") else phase.get("lr")
        resumed = RunConfig.from_dict({**saved_values, **fixes, "resume": True,
                                       "output": str(out), "verbose": config.verbose})
        return out, resumed, latest_readable_state(checkpoints)
    if list_checkpoints(checkpoints) or (out / "model.keras").exists():
        raise ConfigError(
            f"Output directory {str(out)!r} already holds a run. Pass --resume to continue "
            "it, or choose another --output; kerastl never overwrites a finished run."
        )
    return out, config, None


def inside_output(out: Path, relative: str | os.PathLike) -> Path:
    """``out / relative``, refused if ``..`` or a symlink would lead outside ``out``.

    Raises:
        ConfigError: the path escapes the output directory.

    Example:
        >>> inside_output(Path("runs/a"), "checkpoints").name
        'checkpoints'
    """
    root = out.resolve()
    candidate = (out / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise ConfigError(
            f"Output path {str(relative)!r} resolves to {str(candidate)!r}, outside the output "
            f"directory {str(root)!r} ('..' or a symlink); use a path inside it."
        )
    return candidate


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
        **overrides: field values replacing those of ``config``.

    Returns:
        A :class:`RunResult`.

    Raises:
        KerastlError: bad configuration or data (nothing in the output directory is
            lost); ``NonFiniteLossError`` if training diverges (checkpoints kept).
    """
    from .data import augmentation, load_splits
    from .reports import atomic_write_json, atomic_write_text
    from .runtime import setup_runtime, warn_if_local_data, worker_output_dir

    started = time.perf_counter()
    config = RunConfig.from_dict({**(config or RunConfig()).__dict__, **overrides})
    out, config, resume_point = _prepare_output(config)
    if splits is not None:
        _check_no_folders(config)
    else:
        config = apply_sample_defaults(config)
    config.backbone = config.backbone or DEFAULT_BACKBONE
    config.validate()
    runtime = setup_runtime(config.strategy, config.precision, batch_size=config.batch_size,
                            jit_compile=_jit_flag(config.jit_compile),
                            steps_per_execution=config.steps_per_execution)
    _seed_everything(config.seed, runtime)
    for path in (config.data, config.val_data, config.test_data):
        if path:
            warn_if_local_data(path, runtime)
    out = worker_output_dir(out, runtime)
    log = print if (config.verbose and runtime.is_chief) else (lambda *_: None)
    if splits is None:
        splits = load_splits(config.data, val_dir=config.val_data, test_dir=config.test_data,
                             val_split=config.val_split, seed=config.seed,
                             on_bad_file=config.on_bad_file)
    image_size = config.image_size or keras_default_size(config.backbone)
    config.image_size = image_size
    atomic_write_text(out / "config.yaml", config.to_yaml())
    log(runtime.describe())

    sklearn_kind = config.head[len("sklearn-"):] if config.head.startswith("sklearn-") else None
    model = _build_run_model(config, runtime, len(splits.class_names), image_size)
    if sklearn_kind:
        return _fit_sklearn(config, runtime, model, splits, image_size, sklearn_kind, out,
                            started, log)
    notes: list[str] = []
    data_for_phase = _phase_data_factory(config, runtime, model, splits, image_size,
                                         augmentation, notes, log)
    trainer = _make_trainer(config, runtime, model, splits, out, callbacks, log)
    state, resume_from = _resume_state(resume_point, log)
    writer = tf.summary.create_file_writer(str(inside_output(out, "tensorboard")))
    state = trainer.run(config.resolved_phases(), data_for_phase, state, resume_from,
                        on_epoch_end=lambda s: _epoch_outputs(out, s, writer))
    metrics = _final_outputs(out, config, runtime, model, splits, image_size, state, notes,
                             started, atomic_write_json, atomic_write_text, log)
    return RunResult(out, model, state.history, metrics, splits.class_names, config,
                     time.perf_counter() - started, notes)


def _build_run_model(config: RunConfig, runtime, n_classes: int, image_size: int):
    """The model a run trains, built inside the strategy scope."""
    phases = config.resolved_phases()
    # The base is called with training=False unless some phase trains BatchNorm.
    trains_bn = any(p.bn_policy == "train" or p.mode == "scratch" for p in phases)
    with runtime.strategy.scope():
        return build_model(
            config.backbone, n_classes, input_shape=image_size,
            weights=None if config.weights in (None, "none") else config.weights,
            weights_hash=config.weights_hash,
            head="avg" if config.head.startswith("sklearn-") else config.head,
            dense_units=tuple(config.dense_units), dropout=config.dropout, task=config.task,
            head_norm=config.head_norm, bn_policy="train" if trains_bn else "frozen",
            mode="scratch" if phases[0].mode == "scratch" else "frozen",
            backbone_kwargs=config.backbone_kwargs,
        )


def _make_trainer(config: RunConfig, runtime, model, splits, out: Path, callbacks, log):
    from .runtime import loss_scale_optimizer

    return Trainer(
        model, runtime.strategy, task=config.task, optimizer=config.optimizer,
        schedule=config.schedule, weight_decay=config.weight_decay, momentum=config.momentum,
        label_smoothing=config.label_smoothing, warmup_fraction=config.warmup_fraction,
        class_weights=_class_weights(config, splits.train.labels, len(splits.class_names)),
        early_stopping=config.early_stopping, callbacks=callbacks,
        checkpoint_dir=inside_output(out, "checkpoints"), is_chief=runtime.is_chief,
        wrap_optimizer=lambda opt: loss_scale_optimizer(opt, runtime.precision),
        jit_compile=runtime.jit_compile, steps_per_execution=runtime.steps_per_execution,
        verbose=config.verbose if runtime.is_chief else 0, log=log,
    )


def _check_no_folders(config: RunConfig) -> None:
    folders = {key: getattr(config, key) for key in ("data", "val_data", "test_data")
               if getattr(config, key) is not None}
    if folders:
        raise ConfigError(
            f"fit() received splits= and data folders {folders}; pass one or the other."
        )


def _fit_sklearn(config, runtime, model, splits, image_size, kind, out, started, log):
    """``--head sklearn-KIND``: a scikit-learn head on frozen pooled features."""
    from .reports import atomic_write_json, write_evaluation
    from .sklearn_heads import SklearnClassifier

    log(f"Fitting a scikit-learn {kind} head on frozen {config.backbone} features.")
    classifier = SklearnClassifier.fit(model, splits.train, kind, image_size=image_size,
                                       batch_size=runtime.global_batch)
    classifier.save(inside_output(out, "sklearn_classifier"))
    evaluation = splits.test or splits.val
    probs = classifier.predict_proba(evaluation)
    metrics = write_evaluation(out, evaluation.labels, probs, splits.class_names,
                               task=config.task)
    metrics["evaluated_on"] = "test" if splits.test is not None else "validation"
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "labels.json", {"class_names": splits.class_names,
                                            "task": config.task, "image_size": image_size})
    seconds = time.perf_counter() - started
    log(f"{kind} head: accuracy {metrics['accuracy']:.4f} on the {metrics['evaluated_on']} "
        f"split in {seconds:.1f} s. Load it with "
        f"kerastl.SklearnClassifier.load({str(out / 'sklearn_classifier')!r}).")
    return RunResult(out, classifier.extractor, [], metrics, splits.class_names, config,
                     seconds, [f"scikit-learn {kind} head on frozen features"])


def keras_default_size(backbone: str) -> int:
    from .backbones import get_backbone

    return get_backbone(backbone).default_size


def _jit_flag(value: Any) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    lowered = str(value).lower()
    if lowered in ("true", "on", "1", "yes"):
        return True
    if lowered in ("false", "off", "0", "no"):
        return False
    raise ConfigError(f"jit_compile must be auto, on or off; received {value!r}.")


def _seed_everything(seed: int, runtime) -> None:
    keras.utils.set_random_seed(seed)
    if runtime.strategy_name == "default" and not tf.config.list_physical_devices("GPU"):
        # Same seed, same weights on CPU: TensorFlow's deterministic kernels.
        tf.config.experimental.enable_op_determinism()


def _class_weights(config: RunConfig, labels: np.ndarray, n_classes: int):
    """Balanced weight per class (multiclass and binary: 0/1 labels are class ids)."""
    if config.class_weight == "none":
        return None
    if config.task == "multilabel":
        raise ConfigError(
            "class_weight='balanced' weights each example by its class, which a multilabel "
            "example does not have; received task='multilabel', class_weight='balanced'. "
            "Use --class-weight none."
        )
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights.tolist()


def _resume_state(resume_point, log):
    if resume_point is None:
        return TrainState(), None
    checkpoint, state = resume_point
    log(f"Resuming from {checkpoint} (epoch {state.epoch}, phase {state.phase_index + 1}).")
    return state, checkpoint


def _phase_data_factory(config, runtime, model, splits, image_size, augmentation, notes, log):
    batch = runtime.global_batch
    seed = config.seed
    n_train = len(splits.train)
    steps = n_train // batch if runtime.drop_remainder else math.ceil(n_train / batch)
    if steps < 1:
        raise ConfigError(
            f"batch_size {batch} is larger than the {n_train} training images with "
            "drop_remainder; lower --batch-size."
        )
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

        return PhaseData(model, train, val, steps, description=why)

    def data_for_phase(phase: Phase) -> PhaseData:
        if phase.mode != "frozen":
            return image_data(phase, "images through the whole model")
        if config.feature_cache == "off":
            return image_data(phase, "feature cache off (--feature-cache off)")
        if config.augment:
            return image_data(phase, "feature cache not used: augmentation runs before the "
                                     "base (use --augment none to train the head on cached "
                                     "features)")
        applies, reason = _cache_applies(model, phase)
        if not applies:
            why = f"feature cache not used: {reason}"
            notes.append(f"phase {phase.name!r}: {why}")
            return image_data(phase, why)
        return _cached_phase(config, runtime, model, splits, image_size, batch, steps, notes, log)

    return data_for_phase


def _cache_applies(model, phase: Phase) -> tuple[bool, str]:
    """Whether this frozen phase can train on cached features (e.g. no active dropout)."""
    from .features import cache_applies
    from .freezing import set_regime

    # Checked in the phase's own regime: the previous phase may have unfrozen the base.
    set_regime(model, "frozen", bn_policy=phase.bn_policy, recompile=False)
    return cache_applies(model)


def _cached_phase(config, runtime, model, splits, image_size, batch, steps, notes, log):
    from .features import FeatureCache, cached_feature_datasets, head_model

    cache_dir = config.feature_cache_dir
    if cache_dir is not None and not Path(cache_dir).is_absolute():
        cache_dir = inside_output(Path(config.output), cache_dir)  # relative: inside the run
    cache = FeatureCache(cache_dir)
    train, val = cached_feature_datasets(
        model, splits.train, splits.val, image_size=image_size, batch_size=batch, cache=cache,
        seed=config.seed,
    )
    note = f"head trained on cached base features ({cache.explain()})"
    notes.append(note)
    with runtime.strategy.scope():
        head = head_model(model)
    return PhaseData(head, train, val, steps, description=note)


def _epoch_outputs(out: Path, state: TrainState, writer) -> None:
    from .reports import write_history_csv

    write_history_csv(state.history, out / "history.csv")
    row = state.history[-1]
    with writer.as_default(step=row["epoch"]):
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                tf.summary.scalar(key, value)
    writer.flush()


def _final_outputs(out, config, runtime, model, splits, image_size, state, notes, started,
                   atomic_write_json, atomic_write_text, log) -> dict:
    from .reports import plot_curves, summary_text, write_evaluation, write_history_csv
    from .weights import save_base_weights

    evaluation = splits.test or splits.val
    which = "test" if splits.test is not None else "validation"
    probs, labels = predict(model, evaluation.batches(image_size, runtime.global_batch))
    # The definition of val_loss: label smoothing and class weights as in training.
    loss_settings = {"label_smoothing": config.label_smoothing, "class_weights": _class_weights(
        config, splits.train.labels, len(splits.class_names))}
    losses = evaluation_losses(config.task, labels, probs, **loss_settings)
    loss = losses.pop("loss")
    metrics = write_evaluation(out, labels, probs, splits.class_names, task=config.task,
                               loss=loss, extra=losses)
    metrics["evaluated_on"] = which
    atomic_write_json(out / "metrics.json", metrics)
    write_history_csv(state.history, out / "history.csv")
    plot_curves(state.history, out / "curves.png")
    _save_model_atomically(model, out / "model.keras")
    save_base_weights(model.get_layer("backbone"), out / "backbone.weights.h5")
    atomic_write_json(out / "labels.json", {"class_names": splits.class_names,
                                            "task": config.task, "image_size": image_size,
                                            "loss": loss_settings})
    if splits.train.skipped:
        atomic_write_text(out / "skipped_files.txt", "".join(
            f"{path}\t{reason}\n" for path, reason in splits.train.skipped.items()))
    seconds = time.perf_counter() - started
    atomic_write_json(out / "run.json", _run_facts(config, runtime, model, state, notes,
                                                   seconds, splits))
    best = max(state.history, key=lambda r: r.get("val_accuracy", -1.0), default={})
    log("\n" + summary_text({
        "backbone": config.backbone,
        "phases": [{"name": p.name, "epochs": p.epochs} for p in config.resolved_phases()],
        "epochs": state.epoch,
        "examples": {"train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test or [])},
        "best_val_accuracy": best.get("val_accuracy"), "best_epoch": best.get("epoch"),
        "test_accuracy": metrics.get("accuracy"), "test_loss": loss, "evaluated_on": which,
        "seconds": seconds, "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights), "output_dir": str(out),
    }))
    log(f"Outputs written to {out.resolve()}")
    return metrics


def _save_model_atomically(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _run_facts(config, runtime, model, state, notes, seconds, splits) -> dict:
    from . import __version__

    return {
        "versions": {
            "kerastl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "runtime": runtime.describe(),
        "seconds": round(seconds, 2),
        "epochs": state.epoch,
        "examples": {"train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test or [])},
        "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights),
        "notes": notes,
    }

"""What a run is: one dataclass that the CLI, YAML files and notebooks all produce.

:class:`RunConfig` is the single room for a run's options. Each field carries its
default, its help text, its CLI group and (for closed choices) the constant of the
module that implements it, so the ``train``/``compare`` parsers are generated from it
and nothing is typed twice. :func:`kerastl.recipes.resolve.resolve_run` decides every
``auto`` once and returns it read-only (:meth:`RunConfig.frozen`), which is written
next to the outputs as ``config.yaml``: ``--config that.yaml`` reproduces the run.

Example:
    >>> config = RunConfig(data="data_samples/fashion/train", epochs=3)
    >>> sorted(config.given)
    ['data', 'epochs']
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError
from .choices import (
    AUGMENTATIONS,
    AUTO,
    BAD_FILE_POLICIES,
    BLEND_CHOICES,
    BN_POLICIES,
    CHECK_FILES,
    CLASS_WEIGHTS,
    CPU_ONE_THREAD_MAX_SIDE,
    FEATURE_CACHE_MODES,
    HEAD_NORMS,
    HEADS,
    JIT_CHOICES,
    KEEP_WEIGHTS,
    MAX_STEPS,
    MIN_EPOCHS,
    MULTI_DEPTH_HEAD,
    OPTIMIZERS,
    PHASE_FITS,
    PRECISIONS,
    RUN_MODES,
    SCHEDULES,
    SKLEARN_HEADS,
    STRATEGIES,
    TARGET_STEPS,
    TASKS,
)
from .phases import Phase

GROUPS = ("data", "model", "regime", "optimisation", "runtime", "output")
ALL_HEADS = (*HEADS, MULTI_DEPTH_HEAD, *(f"sklearn-{kind}" for kind in SKLEARN_HEADS))


def option(default: Any = None, help: str = "", *, group: str, factory: Any = None,
           choices: tuple[str, ...] | None = None, metavar: str | None = None,
           flag: str | None = None, cli: bool = True) -> Any:
    """A :class:`RunConfig` field with what the CLI and the docs need to know.

    Args:
        default: the default value (or use ``factory`` for lists and dicts).
        help: str. One line for ``--help``; the default is appended to it.
        group: str. One of :data:`GROUPS`.
        factory: callable, optional. ``default_factory`` of the field.
        choices: tuple of str, optional. The allowed values, taken from the module
            that implements them.
        metavar: str, optional. Placeholder in ``--help``.
        flag: str, optional. The flag, if not ``--`` + the name with dashes.
        cli: bool. Whether the field is a flag (``phases`` is YAML-only).
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}; received {group!r}")
    metadata = {"help": help, "group": group, "choices": choices, "metavar": metavar,
                "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """Everything a training run needs, grouped as the CLI groups its flags.

    Every field is documented by its ``help`` text (``python -m kerastl.train --help``
    and ``docs/configuration.md`` are generated from them). ``given`` records which
    fields were set explicitly (by keyword, YAML key or flag): ``--resume`` applies
    only those of the recovery knobs, whatever their value.
    """

    # data
    data: str | None = option(None, "training folder of class subfolders, a .csv of "
                              "path,label rows (paths relative to it; a;b labels: "
                              "multi-label), or TFRecord shards such as "
                              "'gs://b/train-*.tfrecord' (image/encoded, image/class/label) "
                              "(default: the shipped data_samples/fashion)",
                              group="data", metavar="DIR|CSV|TFRECORDS")
    val_data: str | None = option(None, "validation folder, .csv or TFRecord shards with the "
                                  "same classes (default: held out from --data, see "
                                  "--val-split)", group="data", metavar="DIR|CSV|TFRECORDS")
    test_data: str | None = option(None, "test folder, .csv or TFRecord shards with the same "
                                   "classes", group="data", metavar="DIR|CSV|TFRECORDS")
    val_split: float | str = option("auto", "fraction of --data held out (stratified) when "
                                    "there is no --val-data; 0: none; auto: 0.2 where that "
                                    "leaves each class 10 validation images, else none",
                                    group="data", metavar="F|auto")
    image_size: int | None = option(None, "square input side (default: the size the weights "
                                    "were trained at, else the backbone's default; mode "
                                    "auto without pretrained weights: the images' own side)",
                                    group="data", metavar="S")
    batch_size: int = option(32, "batch size per replica", group="data", metavar="B")
    augment: list[str] = option(help="comma list of augmentations, 'none', or 'auto': translate, "
                                "plus flip unless the training images have a left and a right "
                                "(kerastl.data.mirror); mode frozen: none unless given, so the "
                                "base "
                                "runs once", group="data", factory=lambda: [AUTO],
                                choices=(AUTO, *AUGMENTATIONS), metavar="LIST")
    augment_passes: int = option(4, "frozen phases with --augment: augmented passes computed "
                                 "once and cached (epoch e trains on pass e mod K)",
                                 group="data", metavar="K")
    on_bad_file: str = option("error", "unreadable images: stop with the list, or skip them",
                              group="data", choices=BAD_FILE_POLICIES)
    check_files: str = option("full", "pre-flight check of the image files: full decodes "
                              "each once, on every core (kept for training within "
                              "--decoded-memory); header reads headers only (truncated "
                              "data then stops training when reached); none opens no file",
                              group="data", choices=CHECK_FILES)
    decoded_memory: str = option("auto", "RAM for decoded images kept between epochs: auto "
                                 "(a fifth of the available memory, at most 1G), 0 (every "
                                 "epoch decodes again, on every core) or a size such as 512M or 2G",
                                 group="data", metavar="auto|SIZE")
    # model
    backbone: str | None = option(None, "Keras Applications backbone, any case (default: the "
                                  "one --weights was saved from, else MobileNetV2; see "
                                  "kerastl.list_backbones())", group="model", metavar="NAME")
    backbone_kwargs: dict[str, Any] = option(
        help="backbone constructor arguments, e.g. alpha=0.35", group="model", factory=dict,
        metavar="K=V,...", flag="--backbone-args")
    weights: str | None = option("imagenet", "pretrained base weights: imagenet, none, or a "
                                 ".weights.h5 file (e.g. backbone.weights.h5 of another run)",
                                 group="model", metavar="imagenet|none|PATH")
    weights_hash: str | None = option(None, "expected SHA-256 of --weights", group="model",
                                      metavar="SHA256")
    head: str = option("avg", "pooling of the Keras head; multidepth: a linear probe on "
                       "every depth of the frozen base and the pixels (--mode frozen), "
                       "fine-tuned from there with --mode auto (auto's head when none is "
                       "given and the weights are pretrained); or a scikit-learn head on "
                       "frozen features", group="model",
                       choices=ALL_HEADS)
    dense_units: list[int] = option(help="hidden Dense layers of the head, or 'none'",
                                    group="model", factory=list, metavar="N,N")
    dropout: float = option(0.2, "head dropout", group="model", metavar="P")
    head_norm: str = option("layer", "normalise pooled features before the head",
                            group="model", choices=HEAD_NORMS)
    task: str = option("multiclass", "one class per image, two classes with one sigmoid, or "
                       "several labels per image", group="model", choices=TASKS)
    pixel_blend: str = option("auto", "add a logistic regression on the pooled input "
                              "pixels to the trained network's logits (one Keras model); "
                              "with validation data its strength and weight are chosen on "
                              "it, weight 0 included; without, it is left out where the "
                              "linear probe cross-validates better than pixels (auto: on "
                              "with --mode auto and no --phases or --prune)",
                              group="model", choices=BLEND_CHOICES)
    # regime
    # Defaults chosen on the transfer suite's validation images (benchmarks/
    # transfer_suite.py, ten tasks), never on test images: see recipes.py.
    mode: str = option("auto", "auto: a linear probe on frozen features (on every depth "
                       "and the pixels with pretrained weights and no --head), then every "
                       "layer fine-tuned at lr * finetune-lr-factor, keeping the better on "
                       "validation; finetune/full: head warm-up, then the top blocks / every "
                       "layer",
                       group="regime", choices=RUN_MODES)
    unfreeze_top: int | None = option(None, "finetune: the top N layers (classic "
                                      "base.layers[-N:])", group="regime", metavar="N")
    unfreeze_blocks: int | None = option(None, "finetune: the top K blocks, never splitting "
                                         "a residual block (default: 2)", group="regime",
                                         metavar="K")
    bn_policy: str = option("frozen", "BatchNorm while fine-tuning: frozen (inference mode, "
                            "pretrained statistics) or train", group="regime",
                            choices=BN_POLICIES)
    head_warmup: str = option("train", "how finetune/full/auto fit the new head before "
                              "unfreezing: train (gradient epochs) or probe (logistic "
                              "regression on cached features, written into the head)",
                              group="regime", choices=PHASE_FITS)
    head_epochs: int | None = option(None, "head warm-up epochs before unfreezing (default: "
                                     "a third of the budget)", group="regime", metavar="E")
    phases: list[Phase] | None = option(None, "explicit phases (YAML only)", group="regime",
                                        cli=False)
    # optimisation
    epochs: int | str = option("auto", "total epochs, or auto (sized in optimizer steps: "
                               f"at least {TARGET_STEPS} steps and {MIN_EPOCHS} epochs, at "
                               f"most {MAX_STEPS:,} steps)",
                               group="optimisation", metavar="E|auto")
    lr: float | str = option(1e-2, "peak learning rate of the head phase, or auto (a "
                             "learning-rate range test at the start of each phase)",
                             group="optimisation", metavar="X|auto")
    finetune_lr_factor: float = option(0.1, "unfrozen phases use lr * F",
                                       group="optimisation", metavar="F")
    optimizer: str = option("adamw", "optimizer", group="optimisation", choices=OPTIMIZERS)
    schedule: str = option("cosine", "learning-rate schedule within each phase",
                           group="optimisation", choices=SCHEDULES)
    warmup_fraction: float = option(0.1, "share of each phase spent warming the lr up "
                                    "(cosine)", group="optimisation", metavar="F")
    weight_decay: float = option(1e-4, "decoupled weight decay (adamw, sgd)",
                                 group="optimisation", metavar="W")
    momentum: float = option(0.9, "SGD momentum", group="optimisation", metavar="M")
    label_smoothing: float = option(0.1, "label smoothing of the training loss",
                                    group="optimisation", metavar="S")
    class_weight: str = option("none", "weight the loss by inverse class frequency",
                               group="optimisation", choices=CLASS_WEIGHTS)
    early_stopping: int | None = option(None, "stop a phase after PATIENCE epochs without "
                                        "val_loss progress", group="optimisation",
                                        metavar="PATIENCE")
    keep: str = option("best", "weights a run ends with: those of its best validated epoch, "
                       "or the last", group="optimisation", choices=KEEP_WEIGHTS)
    block_lr_decay: float = option(1.0, "discriminative learning rates: while the base "
                                   "trains, each block learns at F times the rate of the "
                                   "block above it (1: one rate)", group="optimisation",
                                   metavar="F")
    anchor_decay: float = option(0.0, "L2-SP: in phases that train the base (finetune, "
                                 "full), decay every trainable weight toward its value "
                                 "when the phase started (the pretrained base; the head "
                                 "as the last phase left it) instead of toward zero, at "
                                 "lr * F (replaces --weight-decay there; 0: off)",
                                 group="optimisation", metavar="F")
    prune: float | None = option(None, "magnitude pruning: after training, one more phase "
                                 "as long as the last one that trains the base prunes it "
                                 "to this share of zero weights (polynomial schedule; "
                                 "pruning.json reports it)", group="optimisation",
                                 metavar="SPARSITY")
    # runtime
    strategy: str = option("auto", "tf.distribute strategy", group="runtime",
                           choices=STRATEGIES)
    precision: str = option("auto", "Keras dtype policy", group="runtime", choices=PRECISIONS)
    seed: int = option(0, "seed of weights, data order, augmentation and splits",
                       group="runtime", metavar="N")
    deterministic: bool = option(False, "TensorFlow's deterministic kernels: the same seed "
                                 "gives bit-identical runs on the same machine (slower)",
                                 group="runtime")
    intra_op_threads: int | str = option("auto", "threads TensorFlow splits one op between "
                                         "(auto: 1 on CPU when a depthwise-separable "
                                         "backbone trains on inputs up to "
                                         f"{CPU_ONE_THREAD_MAX_SIDE} px, which is faster; "
                                         "else every core)", group="runtime", metavar="N")
    jit_compile: str = option("auto", "XLA-compile the train step (auto: on GPU/TPU)",
                              group="runtime", choices=JIT_CHOICES)
    steps_per_execution: int | None = option(None, "train steps per compiled call (default: "
                                             "32 on TPU, else 1)", group="runtime",
                                             metavar="N")
    feature_cache: str = option("auto", "frozen phases train the head on cached base "
                                "features", group="runtime", choices=FEATURE_CACHE_MODES)
    feature_cache_dir: str | None = option(None, "where cached features persist between runs "
                                           "(relative paths: inside --output)",
                                           group="runtime", metavar="DIR")
    # output
    output: str | None = option(None, "output directory (default: a new runs/trainN); an "
                                "existing finished run is never overwritten",
                                group="output", metavar="DIR")
    resume: bool = option(False, "continue the interrupted run in --output", group="output")
    checkpoint_interval: float = option(30.0, "seconds between checkpoints within a phase "
                                        "(every phase end is checkpointed; 0: every epoch)",
                                        group="output", metavar="SECONDS")
    verbose: int = option(1, "0 silent, 1 progress, 2 also TensorFlow's own log",
                          group="output", choices=(0, 1, 2))

    def __init__(self, **values: Any) -> None:
        _init_fields(self, values)

    def frozen(self) -> RunConfig:
        """A read-only copy (lists as tuples); :meth:`replace` gives a writable one."""
        frozen = object.__new__(_FrozenRunConfig)
        frozen.__dict__.update({key: tuple(value) if isinstance(value, list) else value
                                for key, value in self.__dict__.items()})
        return frozen

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain values of every field (phases as dicts), for YAML and JSON."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data = json.loads(json.dumps(data, default=_plain))
        if self.phases is not None:
            data["phases"] = [dataclasses.asdict(p) for p in self.phases]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """A config from a dict of field values (e.g. a YAML file); keys count as given."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = {key: _close_key(key, known) for key in unknown}
            hints = ", ".join(f"{k!r} (did you mean {v!r}?)" if v else repr(k)
                              for k, v in close.items())
            raise ConfigError(f"Unknown configuration keys {hints}; valid keys are "
                              f"{sorted(known)}.")
        return cls(**data)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied; they join ``given``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        copy = RunConfig(**{**values, **changes})
        copy.given = frozenset(self.given | set(changes))
        return copy

    def build_model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`kerastl.build_model` for this (resolved) config."""
        return {
            "input_shape": self.image_size,
            "weights": self.weights,
            "weights_hash": self.weights_hash,
            "head": "avg" if self.sklearn_head or self.multi_depth else self.head,
            "dense_units": tuple(self.dense_units),
            "dropout": self.dropout,
            "task": self.task,
            "head_norm": self.head_norm,
            "backbone_kwargs": dict(self.backbone_kwargs),
        }

    @property
    def multi_depth(self) -> bool:
        """Whether the head is the multi-depth probe (``head="multidepth"``)."""
        return self.head == MULTI_DEPTH_HEAD

    @property
    def sklearn_head(self) -> str | None:
        """``"logreg"`` for ``head="sklearn-logreg"``, None for a Keras head."""
        return self.head[len("sklearn-"):] if self.head.startswith("sklearn-") else None


class _FrozenRunConfig(RunConfig):
    """A resolved :class:`RunConfig`: reading is the same, setting raises."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(
            f"a resolved RunConfig is read-only (setting {name!r}); "
            f"config.replace({name}=...) makes a changed copy.")

    def __eq__(self, other: object) -> bool:  # same values, frozen or not
        return isinstance(other, RunConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "frozen " + super().__repr__().replace(type(self).__name__, "RunConfig", 1)


def csv_list(text: str) -> list[str]:
    """``"flip, translate"`` → ``["flip", "translate"]``; ``""``/``"none"``/``"off"`` → ``[]``.

    Example:
        >>> csv_list("flip,translate"), csv_list("none")
        (['flip', 'translate'], [])
    """
    return [] if text.lower() in ("", "none", "off") else [t.strip() for t in text.split(",")]


DEFAULT_BACKBONE = "MobileNetV2"
# The knobs one changes to recover a failed run; --resume applies them when given.
RESUME_OVERRIDES = ("lr", "precision", "early_stopping", "verbose")


def _init_fields(config: RunConfig, values: dict[str, Any]) -> None:
    known = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"RunConfig got unknown fields {unknown}")
    for name, spec in known.items():
        if name in values:
            value = values[name]
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        else:
            value = spec.default
        setattr(config, name, value)
    config.given = frozenset(values)


def field_default(spec: dataclasses.Field) -> Any:
    """The default value of a :class:`RunConfig` field."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a plain config value")


def _close_key(key: str, known: set[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {str(path)!r}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
    return {key.replace("-", "_"): value for key, value in data.items()}

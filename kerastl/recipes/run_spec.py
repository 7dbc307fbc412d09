"""A resolved run: every choice of a training run made, typed and read-only.

:func:`kerastl.recipes.resolve.resolve_run` turns what a user gave (a
:class:`~kerastl.config.schema.RunConfig`, the data, a run to resume) into one
:class:`ResolvedRun`. Everything after it reads that object, grouped by who needs
it (the data pipeline, the model builder, the trainer, the output writer), and no
layer below ``recipes`` receives the ``RunConfig``. What is decided later is what
only later can know: a phase's ``lr="auto"`` at the start of that phase (the trainer
is handed the range test as a callable), and whether the feature cache applies to a
frozen phase (``feature_cache="auto"``: no active dropout in the base).
``config.yaml`` records :attr:`ResolvedRun.config`, so ``--config config.yaml``
reproduces the run.

Example:
    >>> from kerastl.config.schema import RunConfig
    >>> config = RunConfig(backbone="MobileNetV2", image_size=32).frozen()
    >>> try:
    ...     config.image_size = 64
    ... except AttributeError as error:
    ...     print(type(error).__name__)
    FrozenInstanceError
    >>> config.replace(image_size=64).image_size
    64
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras  # noqa: E402

from ..config.phases import Phase
from ..config.schema import RunConfig
from ..core import backend as _backend  # noqa: F401
from ..models.backbones import Backbone
from ..models.build import build_model
from ..models.multi_depth import multi_depth_model
from ..training.checkpoints import TrainState
from ..training.runtime import Runtime


@dataclass(frozen=True)
class DataPlan:
    """How the images are read and served: the data pipeline's part of a run.

    Attributes:
        image_size: int. Side every image is resized to.
        batch_size: int. The global batch.
        drop_remainder: bool. Static batch shapes (TPU).
        steps_per_epoch: int. Optimizer steps in one pass over the training split.
        seed: int. Shuffle and augmentation seed of epoch 0.
        augment: tuple of str. Augmentations, ``auto`` already decided.
        augment_passes: int. Augmented passes cached for a frozen base.
        feature_cache: str. ``auto``, ``memory``, ``disk`` or ``off``.
        feature_cache_dir: str or None. As given (a relative one is inside the run).
    """

    image_size: int
    batch_size: int
    drop_remainder: bool
    steps_per_epoch: int
    seed: int
    augment: tuple[str, ...]
    augment_passes: int
    feature_cache: str
    feature_cache_dir: str | None


@dataclass(frozen=True)
class ModelSpec:
    """What the model builder needs: the backbone's registry record, looked up once.

    Attributes:
        backbone: Backbone. The registry record.
        num_classes: int.
        build_kwargs: mapping. Keyword arguments of :func:`kerastl.build_model`.
        bn_policy: str. ``train`` if some phase trains BatchNorm, else ``frozen``.
        first_mode: str. The regime the model is built in.
        multi_depth: bool. The head reads every depth of the base
            (:func:`kerastl.models.multi_depth.multi_depth_model`).
    """

    backbone: Backbone
    num_classes: int
    build_kwargs: dict[str, Any]
    bn_policy: str
    first_mode: str
    multi_depth: bool = False

    def build(self, runtime: Runtime) -> keras.Model:
        """The model, built inside the run's strategy scope."""
        with runtime.strategy.scope():
            model = build_model(self.backbone, self.num_classes, **self.build_kwargs,
                                bn_policy=self.bn_policy, mode=self.first_mode)
            return multi_depth_model(model) if self.multi_depth else model


@dataclass(frozen=True)
class OptimizerSpec:
    """What the trainer needs beyond the model and data: loss, optimizer, schedule.

    Attributes:
        task: str. ``binary``, ``multiclass`` or ``multilabel``.
        optimizer, schedule: str. Names from :mod:`kerastl.config.choices`.
        weight_decay, momentum, label_smoothing, warmup_fraction: float.
        class_weight: str. How class weights were chosen; ``class_weights`` the values.
        early_stopping: int or None. Patience in epochs.
        keep: str. ``best`` or ``last``.
        block_lr_decay, anchor_decay: float. Layer-wise rates and L2-SP.
        checkpoint_interval: float. Seconds between checkpoints within a phase.
        seed: int.
        verbose: int. 0 on workers other than the chief.
    """

    task: str
    optimizer: str
    schedule: str
    weight_decay: float
    momentum: float
    label_smoothing: float
    warmup_fraction: float
    class_weight: str
    class_weights: tuple[float, ...] | None
    early_stopping: int | None
    keep: str
    block_lr_decay: float
    anchor_decay: float
    checkpoint_interval: float
    seed: int
    verbose: int

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`kerastl.training.trainer.Trainer`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Recipe:
    """What the run does, in order, and why.

    Attributes:
        phases: tuple of Phase. Every phase, ``epochs="auto"`` counted out (why: in
            :attr:`ResolvedRun.notes`).
        pixel_blend: bool. Whether a pixel model is blended in after training.
        prune: float or None. Final sparsity of a pruning phase.
        sklearn_head: str or None. ``logreg`` etc. for ``--head sklearn-*``.
    """

    phases: tuple[Phase, ...]
    pixel_blend: bool
    prune: float | None
    sklearn_head: str | None


@dataclass(frozen=True)
class OutputPlan:
    """Where the run writes.

    Attributes:
        directory: Path. The run folder (``config.output``).
        writes_to: Path. This process's folder: ``directory`` on the chief, a
            throw-away folder on other workers.
    """

    directory: Path
    writes_to: Path


@dataclass(frozen=True)
class ResolvedRun:
    """Every choice of one run, made once (see :func:`kerastl.recipes.resolve.resolve_run`).

    Attributes:
        config: RunConfig. Read-only, every ``auto`` filled in; ``config.yaml``.
        backbone: Backbone. The registry record (the one lookup of the run).
        runtime: Runtime. Strategy, precision and batch, set up.
        data: DataPlan.
        model: ModelSpec.
        optimizer: OptimizerSpec.
        recipe: Recipe.
        output: OutputPlan.
        resume_point: ``(checkpoint, TrainState)`` to continue from, or None.
        notes: tuple of str. What the user should know before the first step.
    """

    config: RunConfig
    backbone: Backbone
    runtime: Runtime
    data: DataPlan
    model: ModelSpec
    optimizer: OptimizerSpec
    recipe: Recipe
    output: OutputPlan
    resume_point: tuple[Path, TrainState] | None
    notes: tuple[str, ...]

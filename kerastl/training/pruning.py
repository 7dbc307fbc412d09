"""Magnitude pruning for Keras 3: a sparsity schedule, masks, and a plain model at the end.

The TensorFlow Model Optimization toolkit does not support Keras 3, so kerastl owns a
small implementation of gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or
not to prune"). It runs inside kerastl's one training loop as a
:class:`~kerastl.training.phase_data.StepHook`:

* **Schedule.** Over the first half of the pruned phase's epochs the target
  sparsity rises as ``s_e = s_final * (1 - (1 - t_e) ** 3)``, ``t_e = (e + 1) / ramp``:
  large steps while many weights are redundant, small ones near the end; the last
  epochs fine-tune at the final sparsity.
* **Masks.** At the start of each epoch the smallest-magnitude weights of each
  prunable kernel are masked (a per-layer threshold, as in the paper). Pruned
  weights are exactly zero, so they stay the smallest and a mask only ever grows;
  a resumed run therefore recomputes its masks from the restored weights, and no
  mask needs to be saved. Masks are re-applied after every optimizer step, inside the
  compiled train function in cross-replica context, so every replica of a
  ``tf.distribute`` strategy holds the same zeros.
* **What is pruned.** Kernels of ``Conv*``, ``Dense``, ``DepthwiseConv*`` and
  ``SeparableConv*`` layers that train in the pruned phase. Never BatchNorm (its
  scale and shift are per-channel statistics, not connections), never biases (tiny
  and not redundant), never the fixed ``preprocess`` layer, and not the output layer
  (its few weights decide every class and saving them saves nothing).
  **Depthwise kernels** are kept by default: a 3x3 depthwise filter has 9 taps and
  no redundancy to spare, and they are a small share of the weights (8 % of
  MobileNetV3Small's prunable ones). The other kernels are then pruned a little
  harder, so the share of zeros over *all* prunable kernels is still the target.
  Chosen on 1,000 validation images (the default run, Fashion-MNIST training split):
  best pruned minus unpruned val accuracy -0.9 points pruning depthwise taps, +0.4
  keeping them (each a single run). With ``depthwise=True`` they are pruned per
  kernel: each channel's ``kh x kw`` filter loses its own smallest taps (a depthwise
  channel's scale is arbitrary, the BatchNorm after it rescales it, so one threshold
  per layer would wipe out whole low-scale channels).
* **Strip.** Masks are plain variables held by the hook, not wrapper layers: when
  the phase ends (after any early-stopping restore) the final mask is applied once
  more and dropped, and the model is an ordinary Keras model whose file holds
  exact zeros, which gzip compresses.

Example:
    >>> import kerastl
    >>> result = kerastl.fit(kerastl.RunConfig(prune=0.5))  # doctest: +SKIP
    >>> result.output_dir / "pruning.json"  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from ..core.files import atomic_write_json
from ..models.freezing import PREPROCESS_LAYER
from .phase_data import StepHook

RAMP_FRACTION = 0.5  # share of the phase's epochs over which sparsity rises
MAX_LAYER_SPARSITY = 0.99  # a kernel pruned harder to make up for kept depthwise ones
OUTPUT_LAYER = "predictions"
_KERNEL_LAYERS = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    keras.layers.Dense,
)
_DEPTHWISE_LAYERS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_LAYERS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def polynomial_sparsity(final: float, epoch: int, epochs: int,
                        ramp_fraction: float = RAMP_FRACTION) -> float:
    """Target sparsity at the start of ``epoch`` (0-based) of a pruned phase.

    Zhu & Gupta's cubic schedule from 0 to ``final`` over the first
    ``ceil(ramp_fraction * epochs)`` epochs, then ``final``.

    Example:
        >>> [round(polynomial_sparsity(0.5, e, 6), 3) for e in range(6)]
        [0.352, 0.481, 0.5, 0.5, 0.5, 0.5]
    """
    ramp = max(1, math.ceil(ramp_fraction * epochs))
    progress = min(1.0, (epoch + 1) / ramp)
    return final * (1.0 - (1.0 - progress) ** 3)


def magnitude_mask(weights: np.ndarray, sparsity: float, *, per_kernel: bool = False
                   ) -> np.ndarray:
    """1 for the weights kept, 0 for the ``sparsity`` share of smallest magnitude.

    Args:
        weights: np.ndarray. A kernel.
        sparsity: float in ``[0, 1)``.
        per_kernel: bool. Depthwise kernels ``(kh, kw, channels, multiplier)``: the
            share is taken from each channel's own ``kh x kw`` filter.

    Example:
        >>> magnitude_mask(np.array([0.3, -0.1, 0.0, 2.0]), 0.5).tolist()
        [1.0, 0.0, 0.0, 1.0]
    """
    weights = np.asarray(weights)
    columns = int(np.prod(weights.shape[-2:])) if per_kernel else 1
    flat = np.abs(weights.reshape(-1, columns))
    k = int(math.floor(sparsity * flat.shape[0] + 0.5))
    mask = np.ones_like(flat, dtype=weights.dtype)
    if k > 0:
        # A stable sort puts exact zeros (already pruned) first, so masks only grow.
        smallest = np.argsort(flat, axis=0, kind="stable")[:k]
        np.put_along_axis(mask, smallest, 0, axis=0)
    return mask.reshape(weights.shape)


@dataclass
class PrunedWeight:
    """One kernel to prune: its layer, the variable, and how it is ranked."""

    layer: str
    variable: keras.Variable
    per_kernel: bool

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.variable.name}"


def prunable_weights(model: keras.Model, *, trainable_only: bool = True) -> list[PrunedWeight]:
    """The kernels magnitude pruning acts on (see the module docstring for the rules).

    Args:
        model: keras.Model. A kerastl model (nested models are searched).
        trainable_only: bool. Only kernels that train now. Defaults to True.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
        ...                             mode="full")
        >>> any(w.per_kernel for w in prunable_weights(model))
        True
    """
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) in seen or layer.name in (PREPROCESS_LAYER, OUTPUT_LAYER):
            continue
        seen.add(id(layer))
        if isinstance(layer, _DEPTHWISE_LAYERS):
            kernels = [(layer.kernel, True)]
        elif isinstance(layer, _SEPARABLE_LAYERS):
            kernels = [(layer.depthwise_kernel, True), (layer.pointwise_kernel, False)]
        elif isinstance(layer, _KERNEL_LAYERS):
            kernels = [(layer.kernel, False)]
        else:
            continue
        for variable, per_kernel in kernels:
            if variable.trainable or not trainable_only:
                found.append(PrunedWeight(layer.name, variable, per_kernel))
    return found


class MagnitudePruning(StepHook):
    """Gradual magnitude pruning of one phase, as a :class:`~kerastl.training.phase_data.StepHook`.

    Args:
        sparsity: float in ``(0, 1)``. Final share of zeros over the prunable kernels
            (each pruned kernel by its own threshold).
        phase_index: int. Index of the phase to prune (usually the last one, which
            fine-tunes the base).
        log: callable. Receives one line per schedule point.
        ramp_fraction: float. Share of the phase's epochs over which sparsity rises.
        depthwise: bool. Prune depthwise kernels too (per filter). Defaults to False:
            they are kept and the other kernels make up for them.

    Attributes:
        report: dict or None. After the phase: sparsity per pruned kernel and overall.

    Example:
        >>> hook = MagnitudePruning(0.5, phase_index=1)
        >>> trainer = Trainer(model, strategy, step_hooks=[hook])  # doctest: +SKIP
    """

    def __init__(self, sparsity: float, phase_index: int, log=print, *,
                 ramp_fraction: float = RAMP_FRACTION, depthwise: bool = False) -> None:
        if not 0.0 < float(sparsity) < 1.0:
            raise ConfigError(f"prune sparsity must be in (0, 1); received {sparsity!r}.")
        self.sparsity = float(sparsity)
        self.phase_index = int(phase_index)
        self.log = log
        self.ramp_fraction, self.depthwise = float(ramp_fraction), bool(depthwise)
        self.report: dict | None = None
        self._weights: list[PrunedWeight] = []
        self._masks: list[tf.Variable] = []
        self._epochs = 1
        self._current = 0.0
        self._considered: list[PrunedWeight] = []
        self._scale = 1.0

    def on_phase_begin(self, trainer, phase, index, state) -> None:
        self._weights, self._masks = [], []
        if index != self.phase_index:
            return
        self._considered = prunable_weights(trainer.model)
        self._weights = [w for w in self._considered if self.depthwise or not w.per_kernel]
        # Kept depthwise kernels: the others prune harder, to the target over them all.
        everything = sum(int(np.prod(w.variable.shape)) for w in self._considered)
        pruned = sum(int(np.prod(w.variable.shape)) for w in self._weights)
        self._scale = everything / max(1, pruned)
        if not self._weights:
            raise ConfigError(
                f"--prune: phase {phase.name!r} trains no Conv/Dense kernel to prune; prune a "
                "phase with mode finetune, full or scratch."
            )
        self._epochs = phase.epochs
        with trainer.strategy.scope():
            # Mirrored like the weights; written only in cross-replica context.
            self._masks = [
                tf.Variable(np.ones(w.variable.shape, w.variable.dtype), trainable=False,
                            synchronization=tf.VariableSynchronization.ON_WRITE,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                for w in self._weights
            ]
        # A resumed phase already holds zeros; the next schedule point keeps them.
        self._current = 0.0

    def on_epoch_begin(self, phase_epoch: int) -> None:
        if not self._masks:
            return
        self._prune_to(polynomial_sparsity(self.sparsity, phase_epoch, self._epochs,
                                           self.ramp_fraction))

    def after_step(self) -> None:
        for pruned, mask in zip(self._weights, self._masks, strict=True):
            # tf.where, not `variable * mask`: a negative weight times 0 is -0.0, whose
            # bytes (00 00 00 80) differ from +0.0 and cost gzip a bit per zero.
            value = pruned.variable
            pruned.variable.assign(tf.where(mask > 0, value, tf.zeros_like(value)))

    def keeps_epoch(self) -> bool:
        # Only an epoch at the final sparsity may be restored as the best one.
        return not self._masks or self._current >= self.sparsity

    def on_phase_end(self) -> None:
        if not self._masks:
            return
        # Early stopping may have restored weights of an earlier epoch: prune them to
        # the sparsity reached, then drop the masks (the model is a plain model again).
        self._prune_to(self._current, final=True)
        self.report = {**sparsity_report(self._considered, target=self.sparsity),
                       "pruned_kernels": len(self._weights),
                       "depthwise": "pruned" if self.depthwise else "kept"}
        self._weights, self._masks = [], []

    def _prune_to(self, sparsity: float, final: bool = False) -> None:
        changed = sparsity != self._current
        self._current = sparsity
        for pruned, mask in zip(self._weights, self._masks, strict=True):
            values = np.asarray(pruned.variable)
            new = magnitude_mask(values, min(MAX_LAYER_SPARSITY, sparsity * self._scale),
                                 per_kernel=pruned.per_kernel)
            mask.assign(new)
            pruned.variable.assign(np.where(new > 0, values, 0).astype(values.dtype))
        if changed and not final:
            self.log(f"Pruning: {len(self._weights)} kernels at {sparsity:.1%} sparsity "
                     f"(target {self.sparsity:.0%}).")


def sparsity_report(weights: list[PrunedWeight], *, target: float | None = None) -> dict:
    """Share of exact zeros per pruned kernel and over all of them.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None)
        >>> report = sparsity_report(prunable_weights(model, trainable_only=False))
        >>> report["sparsity"] < 0.01
        True
    """
    layers, zeros, total = {}, 0, 0
    for pruned in weights:
        values = np.asarray(pruned.variable)
        n_zero = int(values.size - np.count_nonzero(values))
        layers[pruned.name] = {"shape": list(values.shape), "weights": int(values.size),
                               "sparsity": n_zero / max(1, values.size),
                               "per_kernel": pruned.per_kernel}
        zeros, total = zeros + n_zero, total + int(values.size)
    return {"target_sparsity": target, "sparsity": zeros / max(1, total),
            "pruned_weights": total, "kernels": len(layers), "layers": layers}


def model_sparsity(model: keras.Model) -> float:
    """Share of exact zeros among all of a model's weights (statistics included)."""
    values = [np.asarray(w) for w in model.weights]
    total = sum(v.size for v in values)
    return sum(v.size - np.count_nonzero(v) for v in values) / max(1, total)


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of the file once gzip-compressed (level 9): what pruning saves on the wire.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "zeros.bin"
        >>> _ = path.write_bytes(bytes(10_000))
        >>> gzip_size(path) < 100
        True
    """
    with open(path, "rb") as handle:
        return len(gzip.compress(handle.read(), compresslevel=9))


# ------------------------------------------------------------------ a run's pruning
def pruning_hooks(sparsity: float | None, phases, log=print) -> list[MagnitudePruning]:
    """``[MagnitudePruning]`` for the last phase that trains the base, or ``[]``.

    Example:
        >>> from kerastl import Phase
        >>> phases = [Phase("head", 1), Phase("full", 2, mode="full")]
        >>> [h.phase_index for h in pruning_hooks(0.5, phases)]
        [1]
    """
    if sparsity is None:
        return []
    trained = [i for i, phase in enumerate(phases) if phase.mode != "frozen"]
    if not trained:
        raise ConfigError(
            f"prune={sparsity} needs a phase that trains the base; received phases "
            f"{[p.mode for p in phases]}. Use mode finetune, full or scratch."
        )
    return [MagnitudePruning(sparsity, trained[-1], log=log)]


def write_pruning_report(out, hook: MagnitudePruning, model: keras.Model, log=print) -> dict:
    """``pruning.json`` in a run directory: sparsity per layer, gzip size of the model."""
    path = os.path.join(out, "model.keras")
    report = {**(hook.report or {}), "model_sparsity": model_sparsity(model),
              "model_keras_bytes": os.path.getsize(path),
              "model_keras_gzip_bytes": gzip_size(path)}
    atomic_write_json(os.path.join(out, "pruning.json"), report)
    megabytes = report["model_keras_bytes"] / 1e6, report["model_keras_gzip_bytes"] / 1e6
    kernels = report.get("kernels", 0)
    pruned = report.get("pruned_kernels", kernels)
    log(f"Pruned {pruned} kernels" + (f" ({kernels - pruned} depthwise kept)" if kernels > pruned
                                      else "")
        + f" to {report.get('sparsity', 0):.1%} zeros over all {kernels} "
        f"kernels ({report['model_sparsity']:.1%} of all weights); model.keras "
        f"{megabytes[0]:.2f} MB, {megabytes[1]:.2f} MB gzip-compressed. Details: pruning.json.")
    return report

"""Optimizers and learning rates: schedules, and lower rates for earlier blocks.

Keras has the optimizers and schedules; what it lacks for transfer learning is
*discriminative* learning rates (fastai's ``slice(lo, hi)``, ULMFiT): when a
pretrained base is unfrozen, its early, general blocks should move less than its top
blocks and the new head. Scaling gradients does not do it for Adam-style optimizers,
which are invariant to gradient scale, so :func:`make_optimizer` can give the
optimizer a learning-rate multiplier per variable, applied inside its update step.

Example:
    >>> opt = make_optimizer("adamw", 1e-3, weight_decay=1e-4)
    >>> type(opt).__name__
    'AdamW'
"""

from __future__ import annotations

from collections.abc import Mapping

import keras  # noqa: E402

from ..config.choices import OPTIMIZERS, SCHEDULES
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from ..models.freezing import backbone_blocks, find_backbone


def make_schedule(kind: str, peak_lr: float, total_steps: int, warmup_steps: int = 0):
    """A Keras learning-rate schedule.

    Args:
        kind: str. ``"constant"``, ``"cosine"`` (cosine decay after an optional
            linear warm-up) or ``"onecycle"`` (30 % warm-up from ``peak/25``, then
            cosine decay to ``peak/1e4``, as fastai's ``fit_one_cycle``).
        peak_lr: float. Highest learning rate.
        total_steps: int. Optimizer steps in the phase.
        warmup_steps: int. Linear warm-up steps (cosine only).

    Example:
        >>> float(make_schedule("cosine", 1e-3, 100)(100)) < 1e-5
        True
    """
    total_steps = max(1, int(total_steps))
    schedules = keras.optimizers.schedules
    if kind == "constant":
        return peak_lr
    if kind == "cosine":
        warmup = min(int(warmup_steps), total_steps - 1)
        if warmup <= 0:
            return schedules.CosineDecay(peak_lr, decay_steps=total_steps, alpha=0.0)
        return schedules.CosineDecay(
            0.0, decay_steps=total_steps - warmup, warmup_target=peak_lr,
            warmup_steps=warmup, alpha=0.0,
        )
    if kind == "onecycle":
        warmup = max(1, int(0.3 * total_steps))
        return schedules.CosineDecay(
            peak_lr / 25.0, decay_steps=max(1, total_steps - warmup), warmup_target=peak_lr,
            warmup_steps=warmup, alpha=1e-4,
        )
    raise ConfigError(f"schedule must be one of {SCHEDULES}; received schedule={kind!r}.")


def make_optimizer(
    name: str,
    learning_rate,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    lr_multipliers: Mapping[str, float] | None = None,
    anchor_decay: float = 0.0,
) -> keras.optimizers.Optimizer:
    """Adam, AdamW (decoupled weight decay) or SGD with momentum.

    Args:
        name: str. One of :data:`OPTIMIZERS`.
        learning_rate: float or a Keras schedule.
        weight_decay: float. Decoupled weight decay (``adamw``, ``sgd``).
        momentum: float. SGD momentum (Nesterov).
        lr_multipliers: mapping of variable path to factor, optional. Variables
            listed update at ``learning_rate * factor`` (see :func:`block_lr_multipliers`);
            others at ``learning_rate``.
        anchor_decay: float. Decoupled decay toward the values the variables have
            when the optimizer is built (L2-SP): after each update
            ``w -= lr * anchor_decay * (w - w_built)``. It replaces ``weight_decay``
            (decay toward zero). The anchors are a copy of the variables, saved with
            the optimizer's state. Defaults to 0 (off).

    Returns:
        A Keras optimizer (not built).

    Example:
        >>> opt = make_optimizer("adamw", 1e-3, anchor_decay=3.0)
        >>> opt.anchor_decay, float(opt.weight_decay or 0.0)
        (3.0, 0.0)
    """
    classes = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
               "sgd": keras.optimizers.SGD}
    if name not in classes:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}; received optimizer={name!r}.")
    if anchor_decay < 0:
        raise ConfigError(f"anchor_decay must be >= 0; received {anchor_decay!r}.")
    if anchor_decay:
        weight_decay = 0.0
    kwargs = {"adam": {}, "adamw": {"weight_decay": weight_decay},
              "sgd": {"momentum": momentum, "nesterov": True,
                      "weight_decay": weight_decay or None}}[name]
    mixins = ((_PerVariableRates,) if lr_multipliers else ()) + \
        ((_Anchored,) if anchor_decay else ())
    optimizer = _with_mixins(classes[name], mixins)(learning_rate, **kwargs)
    if lr_multipliers:
        optimizer.lr_multipliers = dict(lr_multipliers)
    if anchor_decay:
        optimizer.anchor_decay = float(anchor_decay)
    return optimizer


class _PerVariableRates:
    """Mixin: scale the learning rate of each variable in the update step.

    ``lr_multipliers`` maps variable paths to factors; they are looked up once, when
    the optimizer is built, by the key Keras itself uses for its slots.
    """

    lr_multipliers: dict[str, float] = {}

    def build(self, variables):
        super().build(variables)
        self._scale_by_key = {self._var_key(v): float(self.lr_multipliers[v.path])
                              for v in variables if v.path in self.lr_multipliers}

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_by_key.get(self._var_key(variable))
        if scale is not None and scale != 1.0:
            learning_rate = learning_rate * scale
        return super().update_step(gradient, variable, learning_rate)


class _Anchored:
    """Mixin: L2-SP, decay toward the weights the optimizer was built on.

    Why (Li, Grandvalet and Davoine, 2018, "Explicit inductive bias for transfer
    learning"): decay toward zero pulls a pretrained base away from what it learned,
    and on a few labelled images nothing else holds it near. The anchors are
    optimizer variables, so a checkpoint keeps them and a resumed phase decays
    toward the same weights. After :class:`_PerVariableRates` in the MRO, it sees
    each variable's scaled rate.
    """

    anchor_decay: float = 0.0

    def build(self, variables):
        super().build(variables)
        if getattr(self, "_anchors", None) is not None:
            return  # built before: the anchors stay those of the first build
        self._anchors = {}
        for variable in variables:
            anchor = self.add_variable_from_reference(variable, "anchor")
            anchor.assign(variable)
            self._anchors[self._var_key(variable)] = anchor

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)
        anchor = self._anchors[self._var_key(variable)]
        rate = keras.ops.cast(learning_rate, variable.dtype) * self.anchor_decay
        self.assign_sub(variable, (variable - anchor) * rate)


_MIXED_CLASSES: dict[tuple[type, tuple[type, ...]], type] = {}


def _with_mixins(cls: type, mixins: tuple[type, ...]) -> type:
    if not mixins:
        return cls
    key = (cls, mixins)
    if key not in _MIXED_CLASSES:
        _MIXED_CLASSES[key] = type(cls.__name__, (*mixins, cls), {})
    return _MIXED_CLASSES[key]


def block_lr_multipliers(model: keras.Model, decay: float) -> dict[str, float]:
    """Learning-rate factor per base variable: ``decay ** k`` for the k-th block below the top.

    The head and the top block of the base train at the full rate; each block below
    at ``decay`` times the rate of the block above it (blocks from the registry,
    never splitting a residual branch). ``decay=1`` means one rate for all.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        decay: float in ``(0, 1]``.

    Returns:
        ``{variable path: factor}`` for the base's variables with a factor below 1.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> rates = block_lr_multipliers(model, 0.5)
        >>> sorted(set(rates.values()))[-1], min(rates.values())
        (0.5, 0.0625)
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"block_lr_decay must be in (0, 1]; received {decay!r}.")
    base, entry = find_backbone(model)
    blocks = backbone_blocks(base, entry)
    multipliers = {}
    for depth, block in enumerate(reversed(blocks)):
        factor = decay ** depth
        if factor == 1.0:
            continue
        for layer in block.layers:
            for variable in layer.weights:
                multipliers[variable.path] = factor
    return multipliers

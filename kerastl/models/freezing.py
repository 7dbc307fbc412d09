"""Which layers train: regimes, blocks and the printed unfreeze plan.

Three regimes people compare (plus ``full``), applied to a model built by
:func:`kerastl.build_model`:

* ``frozen``: the base does not train and runs in inference mode.
* ``finetune``: the top ``unfreeze_top`` layers (classic ``base.layers[-N:]``) or the
  top ``unfreeze_blocks`` registry blocks train; BatchNorm stays frozen unless
  ``bn_policy="train"``.
* ``full``: every layer trains from pretrained weights (BatchNorm per ``bn_policy``).
* ``scratch``: random initialisation, everything trains, BatchNorm included.

Changing ``trainable`` on a compiled Keras model does nothing until it is recompiled
(keras#6405): :func:`set_regime` recompiles a compiled model through Keras's own
``get_compile_config``/``compile_from_config`` so stale flags cannot train.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import keras  # noqa: E402

from ..config.choices import BN_POLICIES, REGIMES
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError, UnknownBackboneError
from .backbones import Backbone, as_backbone, get_backbone

BACKBONE_LAYER = "backbone"
PREPROCESS_LAYER = "preprocess"
# The Concatenate layer of a multi-depth probe (kerastl.models.multi_depth): its output
# is what the probe's head reads, in place of the base output.
DEPTHS_LAYER = "depths"
MODEL_PREFIX = "kerastl_"


@dataclass(frozen=True)
class Block:
    """A contiguous run of base layers that train or freeze together.

    Attributes:
        name: str. Block label from the registry patterns (``"conv5_block3"``).
        layers: tuple of keras layers, in model order.
    """

    name: str
    layers: tuple

    @property
    def params(self) -> int:
        return sum(layer.count_params() for layer in self.layers if layer.built)


@dataclass
class UnfreezePlan:
    """What trains after :func:`set_regime`, printable as a table.

    Attributes:
        mode: str. The regime.
        bn_policy: str. ``"frozen"`` or ``"train"``.
        blocks: list of ``(block name, n layers, params, state)`` rows, top block
            last. ``state`` is ``"train"``, ``"frozen"`` or ``"partial"``.
        trainable_params: int. Parameters the optimizer will update.
        frozen_params: int. Every other parameter (including BatchNorm statistics).
        bn_trainable: int. BatchNorm layers that train (batch statistics).
        bn_frozen: int. BatchNorm layers in inference mode.
        warnings: list of str. E.g. a ``unfreeze_top`` cut that splits a block.
    """

    mode: str
    bn_policy: str
    blocks: list[tuple[str, int, int, str]] = field(default_factory=list)
    trainable_params: int = 0
    frozen_params: int = 0
    bn_trainable: int = 0
    bn_frozen: int = 0
    head_params: int = 0
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"Unfreeze plan: mode={self.mode}, bn_policy={self.bn_policy}"]
        shown = _elide(self.blocks)
        width = max([len(row[0]) for row in shown] + [10])
        lines.append(f"  {'block':<{width}} {'layers':>6} {'params':>12}  state")
        for name, n_layers, params, state in shown:
            lines.append(f"  {name:<{width}} {n_layers:>6} {params:>12,}  {state}")
        lines.append(f"  {'head':<{width}} {'':>6} {self.head_params:>12,}  train")
        lines.append(
            f"  trainable params: {self.trainable_params:,}   "
            f"frozen params: {self.frozen_params:,}"
        )
        why = (" (frozen BN keeps its pretrained statistics while its block fine-tunes)"
               if self.bn_frozen and self.mode in ("finetune", "full") else "")
        lines.append(
            f"  BatchNorm: {self.bn_trainable} training, {self.bn_frozen} in inference "
            f"mode{why}"
        )
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "bn_policy": self.bn_policy,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "trainable_blocks": [b[0] for b in self.blocks if b[3] != "frozen"],
            "bn_trainable": self.bn_trainable,
            "bn_frozen": self.bn_frozen,
            "warnings": list(self.warnings),
        }


def _elide(rows: list, run: int = 4) -> list:
    """Rows to print: a run of ``run`` or more blocks in one state becomes one row.

    Every block is still counted: the row reads ``first..last (k blocks)`` with the
    run's layers and parameters summed, so nothing is cut to an empty ``...``.

    Example:
        >>> rows = [(f"b{i}", 2, 10, "frozen") for i in range(5)] + [("top", 3, 7, "train")]
        >>> _elide(rows)
        [('b0..b4 (5 blocks)', 10, 50, 'frozen'), ('top', 3, 7, 'train')]
    """
    out: list = []
    start = 0
    while start < len(rows):
        end = start
        while end + 1 < len(rows) and rows[end + 1][3] == rows[start][3]:
            end += 1
        group = rows[start:end + 1]
        if len(group) >= run:
            out.append((f"{group[0][0]}..{group[-1][0]} ({len(group)} blocks)",
                        sum(r[1] for r in group), sum(r[2] for r in group), group[0][3]))
        else:
            out.extend(group)
        start = end + 1
    return out


# ----------------------------------------------------------------------------- blocks
def _producers(layer) -> list:
    """Operations (layers or ops) whose outputs feed ``layer`` inside the base."""
    producers = []
    for node in layer._inbound_nodes:
        for tensor in keras.tree.flatten(node.input_tensors):
            history = getattr(tensor, "_keras_history", None)
            if history is not None:
                producers.append(history.operation)
    return producers


def _crossing_counts(layers: list[keras.layers.Layer]) -> list[int]:
    """For each position c, how many tensors flow from layers[:c+1] to layers[c+1:]."""
    index = {id(layer): i for i, layer in enumerate(layers)}
    last_use = [i for i in range(len(layers))]
    for i, layer in enumerate(layers):
        for producer in _producers(layer):
            j = index.get(id(producer))
            if j is not None:
                last_use[j] = max(last_use[j], i)
    counts, open_until = [], []
    for c in range(len(layers)):
        open_until = [u for u in open_until if u > c]
        if last_use[c] > c:
            open_until.append(last_use[c])
        counts.append(len(open_until))
    return counts


def _labels(layers: list[keras.layers.Layer], backbone: Backbone) -> list[str]:
    """Registry label per layer; unmatched layers inherit the label before them."""
    patterns = [re.compile(p) for p in backbone.block_patterns]
    labels, current = [], "stem"
    for layer in layers:
        for pattern in patterns:
            match = pattern.search(layer.name)
            if match:
                label = match.group(1)
                current = f"block_{label}" if label.isdigit() else label
                break
        labels.append(current)
    return labels


def backbone_blocks(base: keras.Model, backbone: Backbone | str) -> list[Block]:
    """Split a base model into registry blocks that never cut a residual branch.

    Each boundary between two registry blocks is moved back to the nearest point of
    the graph crossed by at most ``backbone.max_crossing`` tensors, so shortcut
    convolutions and ``add`` layers land in the block they belong to.

    Args:
        base: keras.Model. A Keras Applications model built without its top.
        backbone: Backbone or str. Its registry entry.

    Returns:
        Blocks in model order (the first is usually ``"stem"``).

    Example:
        >>> import keras
        >>> base = keras.applications.VGG16(include_top=False, weights=None,
        ...                                 input_shape=(32, 32, 3))
        >>> [b.name for b in backbone_blocks(base, "VGG16")]
        ['stem', 'block1', 'block2', 'block3', 'block4', 'block5']
    """
    backbone = as_backbone(backbone)
    # Operations, not just layers: `x + 3.0` inside MobileNetV3 is an op node that
    # a residual tensor can flow through.
    layers = list(base.operations)
    labels = _labels(layers, backbone)
    crossing = _crossing_counts(layers)
    starts, names = [0], [labels[0]]
    for i in range(1, len(layers)):
        if labels[i] == labels[i - 1] or labels[i] in names:
            continue
        cut = i - 1
        while cut >= starts[-1] and crossing[cut] > backbone.max_crossing:
            cut -= 1
        if cut < starts[-1] or cut + 1 == starts[-1]:
            names[-1] = labels[i]  # no clean cut: the two blocks train together
            continue
        starts.append(cut + 1)
        names.append(labels[i])
    ends = starts[1:] + [len(layers)]
    return [
        Block(n, tuple(op for op in layers[s:e] if isinstance(op, keras.layers.Layer)))
        for n, s, e in zip(names, starts, ends, strict=True)
    ]


# ----------------------------------------------------------------------------- regime
def _is_batchnorm(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def find_backbone(model: keras.Model) -> tuple[keras.Model, Backbone]:
    """Return the base model inside a kerastl model and its registry entry.

    The registry entry is the record :func:`kerastl.build_model` attached to the
    model; a model loaded from a file names it in ``model.name``
    (``kerastl_<backbone>``, which ``model.keras`` keeps): the file holds only Keras
    built-in layers, so nothing else in it names the backbone.

    Raises:
        ConfigError: the model was not built by :func:`kerastl.build_model`.
    """
    try:
        base = model.get_layer(BACKBONE_LAYER)
        model.get_layer(PREPROCESS_LAYER)
    except ValueError as error:
        raise ConfigError(
            f"Model {model.name!r} has no '{BACKBONE_LAYER}'/'{PREPROCESS_LAYER}' layers; "
            "set_regime works on models built by kerastl.build_model."
        ) from error
    carried = getattr(model, "kerastl_backbone", None)
    if isinstance(carried, Backbone) and model.name == f"{MODEL_PREFIX}{carried.name.lower()}":
        return base, carried  # as built: the record, not a second lookup
    return base, get_backbone(backbone_name(model))


def backbone_name(model: keras.Model) -> str:
    """Registry name of a kerastl model's backbone, read from ``model.name``.

    Raises:
        ConfigError: the name is not ``kerastl_<registered backbone>``.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> backbone_name(model)
        'VGG16'
    """
    name = str(model.name)
    if name.startswith(MODEL_PREFIX):
        try:
            return get_backbone(name[len(MODEL_PREFIX):]).name
        except UnknownBackboneError:
            pass
    raise ConfigError(
        f"Model name {name!r} does not name a registered backbone; kerastl.build_model "
        f"names its models '{MODEL_PREFIX}<backbone>' (e.g. '{MODEL_PREFIX}mobilenetv2') and "
        "kerastl finds the backbone's registry entry by that name. Keep the name (rename "
        "a copy instead), or rebuild the model with kerastl.build_model."
    )


def validate_regime(
    mode: str,
    unfreeze_top: int | None,
    unfreeze_blocks: int | None,
    bn_policy: str,
) -> None:
    """Check a regime's arguments and raise :class:`ConfigError` quoting bad values."""
    if mode not in REGIMES:
        raise ConfigError(f"mode must be one of {REGIMES}; received mode={mode!r}.")
    if bn_policy not in BN_POLICIES:
        raise ConfigError(
            f"bn_policy must be one of {BN_POLICIES}; received bn_policy={bn_policy!r}."
        )
    if unfreeze_top is not None and unfreeze_blocks is not None:
        raise ConfigError(
            "Pass unfreeze_top or unfreeze_blocks, not both; received "
            f"unfreeze_top={unfreeze_top!r}, unfreeze_blocks={unfreeze_blocks!r}."
        )
    for name, value in (("unfreeze_top", unfreeze_top), ("unfreeze_blocks", unfreeze_blocks)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer; received {name}={value!r}.")
        if value is not None and mode != "finetune":
            raise ConfigError(
                f"{name} only applies to mode='finetune'; received mode={mode!r}, "
                f"{name}={value!r}."
            )
    if mode == "finetune" and unfreeze_top is None and unfreeze_blocks is None:
        raise ConfigError(
            "mode='finetune' needs unfreeze_top=N (top N layers) or unfreeze_blocks=K "
            "(top K blocks); received neither."
        )


def set_regime(
    model: keras.Model,
    mode: str = "frozen",
    *,
    unfreeze_top: int | None = None,
    unfreeze_blocks: int | None = None,
    bn_policy: str = "frozen",
    recompile: bool = True,
) -> UnfreezePlan:
    """Set which layers of a kerastl model train, and return the unfreeze plan.

    The head always trains. In the base, BatchNorm layers follow ``bn_policy``:
    with ``"frozen"`` they keep ``trainable=False``, which in Keras 3 also keeps them
    in inference mode, so fine-tuning a few blocks on a small dataset cannot wreck
    the pretrained statistics (keras#9214). ``mode="scratch"`` always trains them.

    Args:
        model: keras.Model. Built by :func:`kerastl.build_model`.
        mode: str. ``"frozen"``, ``"finetune"``, ``"full"`` or ``"scratch"``.
        unfreeze_top: int, optional. Fine-tune ``base.layers[-N:]`` (the classic
            recipe; may split a residual block, which the plan warns about).
        unfreeze_blocks: int, optional. Fine-tune the top K registry blocks.
        bn_policy: str. ``"frozen"`` (default) or ``"train"``.
        recompile: bool. If the model is compiled, recompile it with a fresh
            optimizer of the same configuration so the new flags take effect.
            Defaults to True.

    Returns:
        The :class:`UnfreezePlan`.

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 3, input_shape=(32, 32, 3),
        ...                             weights=None, head="avg")
        >>> plan = kerastl.set_regime(model, "finetune", unfreeze_blocks=1)
        >>> plan.to_dict()["trainable_blocks"]
        ['block5']
    """
    validate_regime(mode, unfreeze_top, unfreeze_blocks, bn_policy)
    base, backbone = find_backbone(model)
    if mode == "scratch":
        bn_policy = "train"
    if bn_policy == "train" and base_called_in_inference(model):
        raise ConfigError(
            "This model was built with bn_policy='frozen', so its base is called with "
            "training=False and BatchNorm cannot train; received bn_policy='train'. "
            "Rebuild it with kerastl.build_model(..., bn_policy='train')."
        )
    blocks = backbone_blocks(base, backbone)
    train_layers, warnings = _layers_to_train(base, blocks, mode, unfreeze_top, unfreeze_blocks)
    # Keras propagates `trainable` to sublayers, so set the outer flags first.
    model.trainable = True
    model.get_layer(PREPROCESS_LAYER).trainable = False  # a fixed transform, never trained
    base.trainable = bool(train_layers)
    for layer in base.layers if train_layers else ():
        trains = id(layer) in train_layers
        if _is_batchnorm(layer):
            trains = trains and bn_policy == "train"
        layer.trainable = trains
    plan = _make_plan(model, base, blocks, mode, bn_policy, train_layers, warnings)
    if recompile and getattr(model, "compiled", False):
        _recompile(model)
    return plan


def base_nodes(model: keras.Model) -> list:
    """The nodes of ``model``'s own graph that call its ``backbone`` layer.

    A layer records every call in ``_inbound_nodes``, whichever model made it: the
    extractor of :func:`kerastl.models.build.feature_extractor` calls the same base with
    ``training=False``. Only this model's own nodes say how *it* calls the base.
    """
    base = model.get_layer(BACKBONE_LAYER)
    return [node for nodes in model._nodes_by_depth.values() for node in nodes
            if node.operation is base]


def base_called_in_inference(model: keras.Model) -> bool:
    """True when ``model`` calls its base with ``training=False`` (bn_policy="frozen").

    Example:
        >>> import kerastl
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None,
        ...                             bn_policy="train")
        >>> _ = kerastl.models.build.feature_extractor(model)  # calls the base, training=False
        >>> base_called_in_inference(model)
        False
    """
    nodes = base_nodes(model)
    return bool(nodes) and all(node.arguments.kwargs.get("training") is False
                               for node in nodes)


def _layers_to_train(
    base: keras.Model,
    blocks: list[Block],
    mode: str,
    unfreeze_top: int | None,
    unfreeze_blocks: int | None,
) -> tuple[set[int], list[str]]:
    warnings: list[str] = []
    if mode == "frozen":
        return set(), warnings
    if mode in ("full", "scratch"):
        return {id(layer) for layer in base.layers}, warnings
    if unfreeze_blocks is not None:
        if unfreeze_blocks > len(blocks):
            raise ConfigError(
                f"unfreeze_blocks={unfreeze_blocks} but {base.name} has {len(blocks)} "
                f"blocks ({', '.join(b.name for b in blocks)})."
            )
        chosen = blocks[-unfreeze_blocks:]
        return {id(layer) for block in chosen for layer in block.layers}, warnings
    if unfreeze_top > len(base.layers):
        raise ConfigError(
            f"unfreeze_top={unfreeze_top} but {base.name} has {len(base.layers)} layers."
        )
    chosen_layers = base.layers[-unfreeze_top:]
    chosen = {id(layer) for layer in chosen_layers}
    first = chosen_layers[0]
    for block in blocks:
        inside = [layer for layer in block.layers if id(layer) in chosen]
        if inside and len(inside) < len(block.layers):
            warnings.append(
                f"unfreeze_top={unfreeze_top} starts at layer {first.name!r}, inside block "
                f"{block.name!r} ({len(inside)} of {len(block.layers)} layers train); "
                "unfreeze_blocks never splits a block."
            )
    return chosen, warnings


def _make_plan(model, base, blocks, mode, bn_policy, train_layers, warnings) -> UnfreezePlan:
    plan = UnfreezePlan(mode=mode, bn_policy=bn_policy, warnings=warnings)
    for block in blocks:
        weighted = [layer for layer in block.layers if layer.weights]
        training = [layer for layer in weighted if layer.trainable_weights]
        state = "frozen" if not training else "train" if len(training) == len(
            [layer for layer in weighted if not (_is_batchnorm(layer) and bn_policy != "train")]
        ) else "partial"
        plan.blocks.append((block.name, len(block.layers), block.params, state))
    bns = [layer for layer in base.layers if _is_batchnorm(layer)]
    plan.bn_trainable = sum(1 for layer in bns if layer.trainable)
    plan.bn_frozen = len(bns) - plan.bn_trainable
    plan.trainable_params = count_params(model.trainable_weights)
    plan.frozen_params = count_params(model.non_trainable_weights)
    plan.head_params = count_params(model.weights) - count_params(base.weights)
    return plan


def count_params(weights: list) -> int:
    """Number of scalars in a list of Keras variables."""
    total = 0
    for weight in weights:
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total


def trainable_signature(model: keras.Model) -> tuple[str, ...]:
    """Paths of the trainable variables: what a compiled train step was traced with."""
    return tuple(v.path for v in model.trainable_variables)


def _recompile(model: keras.Model) -> None:
    # Keras rebuilds a fresh optimizer from its config, so its slots match the new
    # trainable set; the old optimizer's slots belonged to other variables.
    config = model.get_compile_config()
    if config is None:
        raise ConfigError(
            f"Model {model.name!r} is compiled but has no compile config to rebuild "
            "from; call model.compile(...) again after set_regime."
        )
    model.compile_from_config(config)

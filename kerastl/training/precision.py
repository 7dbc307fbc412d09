"""Mixed precision: which dtype policy a run trains in, and why."""

from __future__ import annotations

import keras  # noqa: E402

from ..config.choices import PRECISIONS, STRATEGIES
from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from ..models.backbones import Backbone, as_backbone
from .device_facts import DeviceFacts
from .strategies import check_choice

# Tensor Cores (Volta and later) are what make float16 faster than float32;
# on older GPUs mixed_float16 only adds casts.
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)


# CPU flags whose presence makes oneDNN run bfloat16 matmuls/convolutions natively
# (measured here: ~1.45x training speed-up with avx512_bf16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


# Values of ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) that keep oneDNN
# below its avx512_core_bf16 kernels although the CPU has the flag (oneDNN "CPU
# Dispatcher Control"; AVX512_CORE_BF16, AVX512_CORE_AMX, AVX10_* and ALL keep them).
# TensorFlow looks at the CPU flag only, so under such a cap it still asks oneDNN for
# bfloat16 convolutions, which fail to build ("could not create a primitive descriptor").
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_MIC", "AVX512_MIC_4OPS",
    "AVX512_CORE", "AVX512_CORE_VNNI",
})


# Backbone families (kerastl.models.backbones registry) whose convolutions are mostly
# depthwise-separable (MobileNet's and EfficientNet's inverted-residual blocks). On a
# CPU with avx512_bf16, bfloat16 TRAINS them slower: oneDNN's bfloat16 speed-up is in
# dense convolutions and matmuls, and these networks spend their time in depthwise
# convolutions, BatchNorm, activations and the casts around them. MEASURED
# (benchmarks/results/cores.json, kerastl's training step at 32x32, batch 32, each
# precision in its own process): bfloat16/float32 images/s 0.853 MobileNetV2 a=0.35,
# 0.644 MobileNetV3Small a=0.75, 0.529 EfficientNetB0; but 1.056 ResNet50, 1.569 VGG16.
CPU_FLOAT32_FAMILIES = frozenset({"mobilenet", "mobilenet_v2", "mobilenet_v3", "efficientnet",
                                  "efficientnet_v2"})


def choose_precision(requested: str, facts: DeviceFacts, strategy_name: str,
                     backbone: Backbone | str | None = None) -> str:
    """Resolve ``"auto"`` to a Keras dtype policy name; validate anything else.

    Args:
        requested: str. One of ``PRECISIONS``.
        facts: DeviceFacts. The hardware to decide for.
        strategy_name: str. The concrete strategy (TPU rules apply for ``"tpu"``).
        backbone: str, optional. The registry name of the backbone the run trains
            (the policy must be chosen before the model exists). Defaults to None
            (no backbone-specific rule).

    Returns:
        ``"mixed_bfloat16"`` on TPU, ``"mixed_float16"`` when every GPU has compute
        capability >= 7.0, ``"mixed_bfloat16"`` on a CPU-only host with
        ``avx512_bf16``/``amx_bf16`` whose oneDNN is on and not capped below its
        bfloat16 kernels, unless ``backbone`` is of a family in
        :data:`CPU_FLOAT32_FAMILIES`; else ``"float32"``.

    Raises:
        ConfigError: for an unknown value, or ``mixed_float16`` on TPU (TPUs have
            no float16 units).

    Example:
        >>> choose_precision("auto", DeviceFacts(gpus=((6, 1),)), "default")
        'float32'
        >>> bf16 = frozenset({"avx512_bf16"})
        >>> choose_precision("auto", DeviceFacts(cpu_flags=bf16), "default")
        'mixed_bfloat16'
        >>> choose_precision("auto", DeviceFacts(cpu_flags=bf16, onednn_max_isa="AVX2"),
        ...                  "default")
        'float32'
        >>> choose_precision("auto", DeviceFacts(cpu_flags=bf16), "default", "MobileNetV2")
        'float32'
    """
    return precision_and_reason(requested, facts, strategy_name, backbone)[0]


def precision_and_reason(requested: str, facts: DeviceFacts, strategy_name: str,
                          backbone: Backbone | str | None = None):
    check_choice("precision", requested, PRECISIONS)
    check_choice("strategy", strategy_name, STRATEGIES[1:])
    on_tpu = strategy_name == "tpu"
    if on_tpu and requested == "mixed_float16":
        raise ConfigError(
            "precision='mixed_float16' is not supported on TPU: TPUs compute in "
            "bfloat16, not float16. Use precision='mixed_bfloat16' (or 'auto')."
        )
    if requested != "auto":
        return requested, "requested explicitly"
    if on_tpu:
        return "mixed_bfloat16", "TPUs compute natively in bfloat16"
    if facts.gpus:
        oldest = min(facts.gpus)
        if oldest >= MIN_FLOAT16_COMPUTE_CAPABILITY:
            return "mixed_float16", "every GPU has Tensor Cores (compute capability >= 7.0)"
        return "float32", (
            f"a GPU has compute capability {oldest[0]}.{oldest[1]} < 7.0 (no Tensor "
            "Cores), where float16 is not faster"
        )
    bf16_flags = ", ".join(sorted(facts.cpu_flags & BF16_CPU_FLAGS))
    if not bf16_flags:
        return "float32", "the CPU has no native bfloat16 (avx512_bf16/amx_bf16)"
    # The flag alone is not enough: TensorFlow reaches the bfloat16 instructions only
    # through oneDNN. Without it Eigen emulates bfloat16 (measured: MobileNetV2 training
    # 2x slower than float32); capped below them, see ONEDNN_ISAS_WITHOUT_BF16.
    if not facts.onednn_enabled:
        return "float32", (
            f"the CPU has {bf16_flags} but TF_ENABLE_ONEDNN_OPTS turns oneDNN off, so "
            "bfloat16 would be emulated"
        )
    if facts.onednn_max_isa in ONEDNN_ISAS_WITHOUT_BF16:
        return "float32", (
            f"the CPU has {bf16_flags} but ONEDNN_MAX_CPU_ISA={facts.onednn_max_isa} keeps "
            "oneDNN below its bfloat16 kernels"
        )
    family = backbone_family(backbone)
    if family in CPU_FLOAT32_FAMILIES:
        return "float32", (
            f"the CPU has {bf16_flags}, but {backbone} is a depthwise-separable network "
            f"({family}), which bfloat16 slows down on CPU (benchmarks/cores.py)"
        )
    return "mixed_bfloat16", f"the CPU has native bfloat16 ({bf16_flags})"


def backbone_family(backbone: Backbone | str | None) -> str | None:
    return None if backbone is None else as_backbone(backbone).family


def loss_scale_optimizer(
    optimizer: keras.optimizers.Optimizer, precision: str
) -> keras.optimizers.Optimizer:
    """Wrap ``optimizer`` in a ``LossScaleOptimizer`` when ``precision`` needs it.

    Only ``mixed_float16`` needs loss scaling: float16 gradients underflow to zero,
    while bfloat16 has float32's exponent range.

    Args:
        optimizer: keras.optimizers.Optimizer. The optimizer to use.
        precision: str. The dtype policy name in effect.

    Returns:
        A ``keras.optimizers.LossScaleOptimizer`` for ``mixed_float16``, else
        ``optimizer`` itself.

    Example:
        >>> opt = loss_scale_optimizer(keras.optimizers.Adam(), "mixed_float16")
        >>> type(opt).__name__
        'LossScaleOptimizer'
    """
    check_choice("precision", precision, PRECISIONS[1:])
    if precision != "mixed_float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)

"""kerastl: transfer learning and fine-tuning of Keras Applications backbones.

Example:
    >>> import kerastl
    >>> model = kerastl.build_model("MobileNetV2", 5, input_shape=32, weights=None)
    >>> print(kerastl.set_regime(model, "finetune", unfreeze_blocks=2))  # doctest: +SKIP
"""

from . import _backend  # noqa: F401  (pins the TensorFlow backend first)
from .backbones import Backbone, get_backbone, list_backbones
from .errors import (
    ConfigError,
    DataError,
    KerastlError,
    NonFiniteLossError,
    StaleTrainableError,
    UnknownBackboneError,
    WeightsError,
)
from .freezing import UnfreezePlan, backbone_blocks, set_regime
from .model import Preprocess, build_model, load_model

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "ConfigError",
    "DataError",
    "KerastlError",
    "NonFiniteLossError",
    "Preprocess",
    "StaleTrainableError",
    "UnfreezePlan",
    "UnknownBackboneError",
    "WeightsError",
    "__version__",
    "backbone_blocks",
    "build_model",
    "get_backbone",
    "list_backbones",
    "load_model",
    "set_regime",
]

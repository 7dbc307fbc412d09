"""kerastl: transfer learning and fine-tuning of Keras Applications backbones.

Example:
    >>> import kerastl
    >>> model = kerastl.build_model("MobileNetV2", 5, input_shape=32, weights=None)
    >>> print(kerastl.set_regime(model, "finetune", unfreeze_blocks=2))  # doctest: +SKIP
"""

from . import (  # noqa: F401  (submodules)
    _backend,  # noqa: F401  (pins the TensorFlow backend first)
    cli,
    config,
    data,
    datasets,
    deploy,
    doctor,
    features,
    pruning,
    reports,
    runtime,
    sklearn_heads,
)
from .backbones import Backbone, get_backbone, list_backbones
from .config import Phase, RunConfig
from .data import DataSplits, ImageData, augmentation, from_arrays, from_folder, load_splits
from .deploy import ExportReport, export
from .doctor import DoctorReport, diagnose
from .errors import (
    ConfigError,
    DataError,
    KerastlError,
    MissingDependencyError,
    NonFiniteLossError,
    StaleTrainableError,
    UnknownBackboneError,
    WeightsError,
)
from .features import FeatureCache, extract_features, feature_extractor, head_model
from .freezing import UnfreezePlan, backbone_blocks, set_regime
from .model import build_model, load_model
from .run import RunResult, fit
from .runtime import DeviceFacts, Runtime, setup_runtime
from .sklearn_heads import SklearnClassifier
from .training import Trainer

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "ConfigError",
    "DataError",
    "DataSplits",
    "DeviceFacts",
    "DoctorReport",
    "ExportReport",
    "FeatureCache",
    "ImageData",
    "KerastlError",
    "MissingDependencyError",
    "NonFiniteLossError",
    "Phase",
    "RunConfig",
    "RunResult",
    "Runtime",
    "SklearnClassifier",
    "StaleTrainableError",
    "Trainer",
    "UnfreezePlan",
    "UnknownBackboneError",
    "WeightsError",
    "__version__",
    "augmentation",
    "backbone_blocks",
    "build_model",
    "diagnose",
    "export",
    "extract_features",
    "feature_extractor",
    "fit",
    "from_arrays",
    "from_folder",
    "get_backbone",
    "head_model",
    "list_backbones",
    "load_model",
    "load_splits",
    "set_regime",
    "setup_runtime",
]

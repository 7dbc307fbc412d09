"""kerastl: transfer learning and fine-tuning of Keras Applications backbones.

The names below are what a user calls; everything else lives in the submodules
(``kerastl.training``, ``kerastl.features``, ``kerastl.runtime``...), importable but
not part of this list.

Example:
    >>> import kerastl
    >>> model = kerastl.build_model("MobileNetV2", 5, input_shape=32, weights=None)
    >>> print(kerastl.set_regime(model, "finetune", unfreeze_blocks=2))  # doctest: +SKIP
"""

from . import _backend  # noqa: F401  (pins the TensorFlow backend first)
from .backbones import Backbone, get_backbone, list_backbones
from .comparison import compare
from .config import Phase, RunConfig
from .data import DataSplits, ImageData, augmentation, from_arrays, from_folder, load_splits
from .datasets import fashion_mnist
from .deploy import ExportReport, export
from .diagnosis import DoctorReport, diagnose
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
from .feature_cache import FeatureCache
from .features import extract_features
from .freezing import UnfreezePlan, backbone_blocks, set_regime
from .inference import evaluate_folder, predict_paths
from .interpretation import Interpretation, interpret
from .lr_finder import LRFinderResult
from .mirror import MirrorCheck, mirror_check
from .model import build_model, feature_extractor, head_model, load_model
from .run import RunResult, fit, lr_find
from .runtime import Runtime, setup_runtime
from .sklearn_heads import SklearnClassifier

__version__ = "0.2.0"

__all__ = [
    "Backbone",
    "ConfigError",
    "DataError",
    "DataSplits",
    "DoctorReport",
    "ExportReport",
    "FeatureCache",
    "ImageData",
    "Interpretation",
    "KerastlError",
    "LRFinderResult",
    "MirrorCheck",
    "MissingDependencyError",
    "NonFiniteLossError",
    "Phase",
    "RunConfig",
    "RunResult",
    "Runtime",
    "SklearnClassifier",
    "StaleTrainableError",
    "UnfreezePlan",
    "UnknownBackboneError",
    "WeightsError",
    "__version__",
    "augmentation",
    "backbone_blocks",
    "build_model",
    "compare",
    "diagnose",
    "evaluate_folder",
    "export",
    "extract_features",
    "fashion_mnist",
    "feature_extractor",
    "fit",
    "from_arrays",
    "from_folder",
    "get_backbone",
    "head_model",
    "interpret",
    "list_backbones",
    "load_model",
    "load_splits",
    "lr_find",
    "mirror_check",
    "predict_paths",
    "set_regime",
    "setup_runtime",
]

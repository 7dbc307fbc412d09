"""kerastl: transfer learning and fine-tuning of Keras Applications backbones.

The names below are what a user calls; everything else lives in the submodules
(``kerastl.training.trainer``, ``kerastl.models.features``, ...), importable but not part
of this list. ``docs/architecture.md`` draws the layers.

Example:
    >>> import kerastl
    >>> model = kerastl.build_model("MobileNetV2", 5, input_shape=32, weights=None)
    >>> print(kerastl.set_regime(model, "finetune", unfreeze_blocks=2))  # doctest: +SKIP
"""

from .config.phases import Phase
from .config.schema import RunConfig
from .core import backend as _backend  # noqa: F401  (pins the TensorFlow backend first)
from .core.errors import (
    ConfigError,
    DataError,
    KerastlError,
    MissingDependencyError,
    NonFiniteLossError,
    StaleTrainableError,
    UnknownBackboneError,
    WeightsError,
)
from .core.version import __version__
from .data.arrays import from_arrays
from .data.augmentation import augmentation
from .data.datasets import fashion_mnist
from .data.doctor import DoctorReport, diagnose
from .data.folders import from_folder
from .data.image_data import ImageData
from .data.mirror import MirrorCheck, mirror_check
from .data.splits import DataSplits, load_splits
from .deploy.export import ExportReport, export
from .models.backbones import Backbone, get_backbone, list_backbones
from .models.build import build_model, feature_extractor, head_model, load_model
from .models.feature_cache import FeatureCache
from .models.features import extract_features
from .models.freezing import UnfreezePlan, backbone_blocks, set_regime
from .models.multi_depth import multi_depth_probe
from .models.sklearn_head import SklearnClassifier
from .outputs.inference import evaluate_folder, predict_paths
from .outputs.interpretation import Interpretation, interpret
from .recipes.compare_regimes import compare
from .recipes.fit import RunResult, fit, lr_find
from .training.lr_range_test import LRFinderResult
from .training.runtime import Runtime, setup_runtime

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
    "multi_depth_probe",
    "predict_paths",
    "set_regime",
    "setup_runtime",
]

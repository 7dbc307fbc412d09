"""scikit-learn heads on frozen features, saved without pickle.

A linear probe (logistic regression, linear SVM) or a k-nearest-neighbour
classifier on frozen backbone features is the cheapest strong baseline in transfer
learning. :class:`SklearnClassifier` bundles the feature extractor with the fitted
scikit-learn pipeline so users call it on raw images, and saves both without any
pickle: the extractor as a ``.keras`` file loaded with ``safe_mode=True``, the
pipeline as plain NumPy arrays plus JSON, rebuilt into the same estimators on load.
Model files therefore never carry code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import sklearn
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ..config.choices import SKLEARN_HEADS
from ..core import backend as _backend  # noqa: F401
from ..core.backend import single_threaded_blas
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_file, atomic_write, atomic_write_json
from .build import feature_extractor, load_model
from .features import run_extractor
from .worker_features import extract_on_workers, splits_extraction

# Seeded and given enough iterations to converge on standardised features.
_DEFAULTS: dict[str, tuple[type, dict[str, Any]]] = {
    "logreg": (LogisticRegression, {"max_iter": 2000, "random_state": 0}),
    "linear-svm": (LinearSVC, {"max_iter": 10000, "random_state": 0}),
    "knn": (KNeighborsClassifier, {"n_neighbors": 5}),
}

FORMAT = "kerastl-sklearn-classifier"
FORMAT_VERSION = 1
EXTRACTOR_FILE = "extractor.keras"
ARRAYS_FILE = "head.npz"
CONFIG_FILE = "head.json"


def fit_sklearn_head(
    features: np.ndarray, labels: np.ndarray, kind: str = "logreg", **params: Any
) -> Pipeline:
    """Fit ``StandardScaler`` + a seeded scikit-learn classifier on features.

    Args:
        features: array ``(n, ...)``. Feature maps are flattened per image.
        labels: array ``(n,)`` of class ids, or one-hot ``(n, classes)``.
        kind: str. ``"logreg"``, ``"linear-svm"`` or ``"knn"``. Defaults to
            ``"logreg"``.
        **params: estimator arguments overriding kerastl's defaults
            (``C=0.1``, ``n_neighbors=3``...).

    Returns:
        The fitted ``Pipeline`` with steps ``"scale"`` and ``"head"``.

    Example:
        >>> import numpy as np
        >>> from kerastl.models.sklearn_head import fit_sklearn_head
        >>> x = np.array([[0.0], [0.1], [1.0], [1.1]])
        >>> fit_sklearn_head(x, np.array([0, 0, 1, 1])).predict(x).tolist()
        [0, 0, 1, 1]
    """
    estimator_class, defaults = _estimator_spec(kind)
    features, labels = _flat(features), _class_ids(labels)
    if len(features) != len(labels):
        raise DataError(f"Got {len(features)} feature rows but {len(labels)} labels.")
    head = estimator_class(**{**defaults, **params})
    with single_threaded_blas():
        return Pipeline([("scale", StandardScaler()), ("head", head)]).fit(features, labels)


def _estimator_spec(kind: str) -> tuple[type, dict[str, Any]]:
    if kind not in _DEFAULTS:
        raise ConfigError(f"kind must be one of {SKLEARN_HEADS}; received kind={kind!r}.")
    return _DEFAULTS[kind]


def _flat(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features)
    return features.reshape(len(features), -1)


def _class_ids(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        if not np.allclose(labels.sum(axis=1), 1.0):
            raise DataError(
                "scikit-learn heads fit one class per image; received multi-label targets of "
                f"shape {labels.shape}. Use the Keras head (task='multilabel') instead."
            )
        return labels.argmax(axis=1)
    return labels.reshape(len(labels))


class SklearnClassifier:
    """A feature extractor and a fitted scikit-learn head, called on raw images.

    Args:
        extractor: keras.Model. Raw pixels in ``[0, 255]`` → pooled features.
        pipeline: Pipeline. From :func:`fit_sklearn_head`.
        kind: str. One of :data:`SKLEARN_HEADS`.
        class_names: list of str, optional. Names of the classes, by id.
        batch_size: int. Images per forward pass when predicting. Defaults to 64.

    Example:
        >>> import numpy as np, kerastl
        >>> from kerastl.models.sklearn_head import SklearnClassifier
        >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
        >>> images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3))
        >>> clf = SklearnClassifier.fit(model, (images, np.arange(8) % 2), "knn",
        ...                             image_size=32, n_neighbors=1)
        >>> clf.predict(images).tolist()
        [0, 1, 0, 1, 0, 1, 0, 1]
    """

    def __init__(
        self,
        extractor: keras.Model,
        pipeline: Pipeline,
        *,
        kind: str,
        class_names: list[str] | None = None,
        batch_size: int = 64,
    ) -> None:
        _estimator_spec(kind)
        self.extractor = extractor
        self.pipeline = pipeline
        self.kind = kind
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = batch_size

    @property
    def image_size(self) -> int:
        """Side of the images the extractor takes (others are resized)."""
        return int(self.extractor.input_shape[1])

    @classmethod
    def fit(
        cls,
        model: keras.Model,
        train_data: Any,
        kind: str = "logreg",
        *,
        image_size: int,
        batch_size: int = 64,
        labels: np.ndarray | None = None,
        pooling: str = "avg",
        strategy: tf.distribute.Strategy | None = None,
        **params: Any,
    ) -> SklearnClassifier:
        """Extract pooled features of ``train_data`` with ``model``'s base and fit a head.

        Args:
            model: keras.Model. Built by :func:`kerastl.build_model`.
            train_data: an ``ImageData``, ``(images, labels)`` arrays or a batched
                ``tf.data.Dataset`` of ``(images, labels)``.
            kind: str. One of :data:`SKLEARN_HEADS`. Defaults to ``"logreg"``.
            image_size: int. Must be the model's input side.
            batch_size: int. Defaults to 64.
            labels: array, optional. Labels when ``train_data`` is an image array.
            pooling: str. ``"avg"`` or ``"max"`` over the feature map. Defaults to
                ``"avg"``.
            strategy: tf.distribute.Strategy, optional. Under several workers each
                extracts only its share of ``train_data`` and the features are
                gathered (:mod:`kerastl.models.worker_features`).
            **params: estimator arguments, see :func:`fit_sklearn_head`.

        Returns:
            The fitted classifier.
        """
        _estimator_spec(kind)
        side = model.input_shape[1]
        if int(image_size) != side:
            raise ConfigError(
                f"Model {model.name!r} takes {side}x{side} images; received image_size="
                f"{image_size}. Build the model with input_shape={image_size}."
            )
        if pooling not in ("avg", "max"):
            raise ConfigError(f"pooling must be 'avg' or 'max'; received pooling={pooling!r}.")
        extractor = feature_extractor(model, pooling=pooling)
        if splits_extraction(strategy, train_data):  # (images, labels): never unlabelled
            (features, targets), _ = extract_on_workers(
                strategy, lambda part: run_extractor(extractor, part, batch_size=batch_size),
                train_data)
        else:
            features, targets = run_extractor(extractor, train_data, batch_size=batch_size,
                                              labels=labels)
        if targets is None:
            raise DataError("SklearnClassifier.fit needs labels; received images only.")
        pipeline = fit_sklearn_head(features, targets, kind, **params)
        return cls(extractor, pipeline, kind=kind,
                   class_names=getattr(train_data, "class_names", None), batch_size=batch_size)

    def features(self, images: Any) -> np.ndarray:
        """Pooled features of raw images (an array in ``[0, 255]`` or a dataset)."""
        return run_extractor(self.extractor, images, batch_size=self.batch_size)[0]

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities ``(n, classes)`` for raw images.

        ``linear-svm`` has no probabilities; it returns the softmax of its decision
        scores, which ranks classes the same way but is not calibrated.
        """
        features = self.features(images)
        if hasattr(self.pipeline, "predict_proba"):
            return self.pipeline.predict_proba(features)
        scores = self.pipeline.decision_function(features)
        if scores.ndim == 1:  # binary: one score for the positive class
            scores = np.stack([-scores, scores], axis=1)
        return _softmax(scores)

    def predict(self, images: Any) -> np.ndarray:
        """Predicted class ids ``(n,)`` for raw images."""
        return self.pipeline.predict(self.features(images))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``extractor.keras``, ``head.npz`` and ``head.json`` to ``directory``.

        Returns:
            The directory.

        Example:
            >>> import numpy as np, kerastl, tempfile
            >>> from kerastl.models.sklearn_head import SklearnClassifier
            >>> model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None)
            >>> images = np.zeros((4, 32, 32, 3))
            >>> clf = SklearnClassifier.fit(model, (images, np.array([0, 1, 0, 1])),
            ...                             "knn", image_size=32, n_neighbors=1)
            >>> sorted(p.name for p in clf.save(tempfile.mkdtemp()).iterdir())
            ['extractor.keras', 'head.json', 'head.npz']
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays, params = _pipeline_state(self.pipeline, self.kind)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": params,
            "class_names": self.class_names,
            "batch_size": self.batch_size,
            "sklearn_version": sklearn.__version__,
        }
        # The JSON is written last: its presence marks a complete classifier.
        with atomic_file(directory / EXTRACTOR_FILE, suffix=".keras") as tmp:
            self.extractor.save(tmp)
        atomic_write(directory / ARRAYS_FILE, lambda handle: np.savez(handle, **arrays))
        atomic_write_json(directory / CONFIG_FILE, config)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SklearnClassifier:
        """Rebuild a classifier written by :meth:`save`; never unpickles anything.

        Raises:
            FileNotFoundError: a file of the saved classifier is missing.
            ConfigError: the files were not written by :meth:`save`.
        """
        directory = Path(directory)
        for name in (EXTRACTOR_FILE, ARRAYS_FILE, CONFIG_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found; SklearnClassifier.load expects the "
                    f"directory written by SklearnClassifier.save ({EXTRACTOR_FILE}, "
                    f"{ARRAYS_FILE}, {CONFIG_FILE})."
                )
        config = json.loads((directory / CONFIG_FILE).read_text())
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{directory / CONFIG_FILE} is not a {FORMAT} v{FORMAT_VERSION} file; "
                f"received format={config.get('format')!r}, "
                f"format_version={config.get('format_version')!r}."
            )
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        pipeline = _pipeline_from_state(arrays, config["kind"], config["params"])
        extractor = load_model(directory / EXTRACTOR_FILE, compile=False)
        return cls(extractor, pipeline, kind=config["kind"],
                   class_names=config.get("class_names"), batch_size=config["batch_size"])


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _pipeline_state(pipeline: Pipeline, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    """The fitted state of a head pipeline as plain arrays and JSON-able params."""
    scaler, head = pipeline.named_steps["scale"], pipeline.named_steps["head"]
    arrays = {
        "scaler_mean": scaler.mean_,
        "scaler_scale": scaler.scale_,
        "scaler_var": scaler.var_,
        "scaler_n_samples_seen": np.asarray(scaler.n_samples_seen_),
        "classes": np.asarray(head.classes_),
    }
    if kind == "knn":
        # KNN's fitted state is its (standardised) training set.
        arrays["fit_features"] = head._fit_X
        arrays["fit_labels"] = head.classes_[head._y]
    else:
        arrays["coef"], arrays["intercept"] = head.coef_, np.asarray(head.intercept_)
    if any(a.dtype == object for a in arrays.values()):
        raise ConfigError(
            "Class labels must be numbers or strings to be saved without pickle; received "
            f"classes of dtype object: {arrays['classes'][:5]!r}."
        )
    params = head.get_params()
    try:
        json.dumps(params)
    except TypeError as error:
        raise ConfigError(
            f"The {kind} head has parameters that are not plain values ({error}); "
            "kerastl saves heads without pickle, so pass numbers, strings or None."
        ) from error
    return arrays, params


def _pipeline_from_state(arrays: dict[str, np.ndarray], kind: str, params: dict) -> Pipeline:
    """Rebuild the fitted pipeline from :func:`_pipeline_state`'s arrays and params."""
    estimator_class, _ = _estimator_spec(kind)
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_ = arrays["scaler_mean"], arrays["scaler_scale"]
    scaler.var_ = arrays["scaler_var"]
    scaler.n_samples_seen_ = arrays["scaler_n_samples_seen"]
    scaler.n_features_in_ = len(scaler.mean_)
    head = estimator_class(**params)
    if kind == "knn":
        with single_threaded_blas():
            head.fit(arrays["fit_features"], arrays["fit_labels"])
    else:
        head.coef_, head.intercept_ = arrays["coef"], arrays["intercept"]
        head.classes_ = arrays["classes"]
        head.n_features_in_ = head.coef_.shape[1]
    return Pipeline([("scale", scaler), ("head", head)])

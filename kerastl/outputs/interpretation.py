"""What the model gets wrong: per-image losses, top losses, most-confused pairs, Grad-CAM.

fastai's ``ClassificationInterpretation`` for kerastl models (and plain Keras image
classifiers): :func:`interpret` runs the model once over the images, batched, and
returns an :class:`Interpretation` that holds every image's probabilities and loss.
Everything else (``top_losses``, ``most_confused``, the CSV) is computed from those
arrays; Grad-CAM (:mod:`kerastl.models.gradcam`) runs only for the images asked for.

The loss of an image is ``-ln(p_label)`` (the cross-entropy without label smoothing or
class weights); for multi-label data the summed binary cross-entropy over the labels,
so ``p_label = exp(-loss)`` is the probability of the whole label set.

Example:
    >>> import numpy as np, kerastl
    >>> model = kerastl.build_model("MobileNetV2", 2, input_shape=32, weights=None,
    ...                             head="avg", dense_units=(),
    ...                             backbone_kwargs={"alpha": 0.35})
    >>> data = kerastl.from_arrays(np.random.default_rng(0).integers(
    ...     0, 255, (6, 32, 32, 3)).astype("uint8"), [0, 1] * 3)
    >>> interp = kerastl.interpret(model, data)
    >>> len(interp.top_losses(2)), list(interp.rows()[0])
    (2, ['file', 'label', 'predicted', 'p_label', 'p_predicted', 'loss'])
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError, DataError
from ..data.arrays import from_arrays
from ..data.image_data import is_image_data
from ..data.sources import read_data
from ..models.build import TASKS, load_model
from ..models.gradcam import CamModel, cam_model, gradcam_heatmaps
from .prediction_pass import Progress, predict_probabilities
from .run_dir import RunDir

# What --gradcam writes: the top losses' heatmaps, every image's, or none.
GRADCAM_CHOICES = ("top", "all", "none")
TOP_LOSSES = 16
# The smallest probability a loss is computed from: -ln(1e-12) = 27.6, not inf.
MIN_PROBABILITY = 1e-12
PREDICTIONS_HEADER = ("file", "label", "predicted", "p_label", "p_predicted", "loss")
PREDICT_HEADER = ("file", "predicted", "p_predicted")


@dataclass
class Interpretation:
    """Per-image predictions of one model on one set of images.

    Attributes:
        model: keras.Model. The model that predicted (raw pixels in).
        data: ImageData. The images, in the order of every array here.
        class_names: list of str. One per class (class ids as names for a plain Keras
            model without ``labels.json``).
        task: str. ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        probabilities: float array ``(N, C)``; for ``"binary"`` the two columns
            ``1 - p`` and ``p``.
        files: list of str. Each image's name: the path relative to the data folder
            (``cats/001.jpg``), or its index for arrays.
        labelled: bool. Whether the images have labels (``False``: predict only).
        notes: list of str. What a reader should know (e.g. how classes were named).
        seconds: dict. Wall time of the passes run so far (``"prediction pass"``,
            ``"Grad-CAM pass"``), for ``interpretation.json`` and the report.
    """

    model: keras.Model
    data: Any
    class_names: list[str]
    task: str
    probabilities: np.ndarray
    files: list[str]
    labelled: bool = True
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    _cams: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}; received task={self.task!r}.")
        self.probabilities = np.asarray(self.probabilities, np.float64)
        if self.task == "binary" and self.probabilities.shape[1] == 1:
            self.probabilities = np.concatenate([1 - self.probabilities,
                                                 self.probabilities], axis=1)
        if self.probabilities.shape[1] != len(self.class_names):
            raise DataError(
                f"The model outputs {self.probabilities.shape[1]} classes but "
                f"{len(self.class_names)} class names were given: {self.class_names}.")

    @property
    def image_size(self) -> int:
        """Side of the square images the model takes."""
        return int(self.model.input_shape[1])

    @property
    def labels(self) -> np.ndarray:
        """Class ids ``(N,)``, or multi-hot rows ``(N, C)`` for multi-label data."""
        return np.asarray(self.data.labels)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class ids ``(N,)`` (multi-label: multi-hot ``p >= 0.5``)."""
        if self.task == "multilabel":
            return (self.probabilities >= 0.5).astype(np.int64)
        return np.argmax(self.probabilities, axis=1)

    @property
    def p_predicted(self) -> np.ndarray:
        """The probability of the prediction (multi-label: of the predicted set)."""
        if self.task == "multilabel":
            p = np.clip(self.probabilities, MIN_PROBABILITY, 1.0)
            return np.exp(np.sum(np.log(np.maximum(p, 1 - p)), axis=1))
        return np.max(self.probabilities, axis=1)

    @property
    def p_label(self) -> np.ndarray:
        """The probability of the true label (multi-label: of the true label set)."""
        self._need_labels("p_label")
        return np.exp(-self.losses)

    @property
    def losses(self) -> np.ndarray:
        """Each image's loss: ``-ln(p_label)``; multi-label: summed binary cross-entropy."""
        self._need_labels("losses")
        p = np.clip(self.probabilities, MIN_PROBABILITY, 1.0)
        if self.task == "multilabel":
            y = self.labels.astype(bool)
            q = np.clip(1.0 - self.probabilities, MIN_PROBABILITY, 1.0)
            return -np.sum(np.where(y, np.log(p), np.log(q)), axis=1)
        return -np.log(p[np.arange(len(p)), self.labels.astype(np.int64)])

    def names(self, ids: np.ndarray | int) -> str:
        """Class name(s) of a class id or of a multi-hot row (``;``-joined)."""
        ids = np.asarray(ids)
        if ids.ndim == 0:
            return self.class_names[int(ids)]
        return ";".join(n for n, on in zip(self.class_names, ids, strict=True) if on)

    def rows(self, indices: Sequence[int] | np.ndarray | None = None) -> list[dict]:
        """One dict per image (default: every image), the columns of ``predictions.csv``.

        Example:
            >>> sorted(interp.rows()[0])  # doctest: +SKIP
            ['file', 'label', 'loss', 'p_label', 'p_predicted', 'predicted']
        """
        chosen = np.arange(len(self.files)) if indices is None else np.asarray(indices)
        predicted, p_predicted = self.predicted[chosen], self.p_predicted[chosen]
        files = [self.files[i] for i in chosen]
        if not self.labelled:
            return [{"file": f, "predicted": self.names(c), "p_predicted": float(p)}
                    for f, c, p in zip(files, predicted, p_predicted, strict=True)]
        losses, labels = self.losses[chosen], self.labels[chosen]
        return [{"file": f, "label": self.names(y), "predicted": self.names(c),
                 "p_label": float(np.exp(-loss)), "p_predicted": float(p), "loss": float(loss)}
                for f, y, c, p, loss in zip(files, labels, predicted, p_predicted, losses,
                                            strict=True)]

    def to_csv(self) -> str:
        """``predictions.csv``: ``file,label,predicted,p_label,p_predicted,loss`` (or
        ``file,predicted,p_predicted`` without labels), in data order."""
        header = PREDICTIONS_HEADER if self.labelled else PREDICT_HEADER
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                             for k, v in row.items()})
        return buffer.getvalue()

    def top_loss_indices(self, k: int = TOP_LOSSES) -> np.ndarray:
        """Indices of the ``k`` highest-loss images, highest first (ties: data order)."""
        return np.argsort(-self.losses, kind="stable")[:max(int(k), 0)]

    def top_losses(self, k: int = TOP_LOSSES) -> list[dict]:
        """The ``k`` highest-loss images: ``file``, ``label``, ``predicted``, ``loss``.

        Example:
            >>> [row["loss"] for row in interp.top_losses(3)]  # doctest: +SKIP
            [4.2, 3.1, 2.7]
        """
        indices = self.top_loss_indices(k)
        return [{key: row[key] for key in ("file", "label", "predicted", "loss")}
                | {"index": int(i)} for i, row in zip(indices, self.rows(indices), strict=True)]

    def confusion_matrix(self) -> np.ndarray:
        """scikit-learn's confusion matrix (rows: label, columns: predicted).

        Raises:
            ConfigError: multi-label data (one 2x2 matrix per class: see metrics.json).
        """
        self._need_labels("confusion_matrix")
        if self.task == "multilabel":
            raise ConfigError("confusion_matrix is for single-label tasks; multi-label "
                              "data has one 2x2 matrix per class (metrics.json).")
        return confusion_matrix(self.labels.astype(np.int64), self.predicted,
                                labels=list(range(len(self.class_names))))

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """``(label, predicted, count)`` for every pair with label != predicted, most first.

        Args:
            min_count: int. Leave out pairs seen fewer times. Defaults to 1.

        Example:
            >>> interp.most_confused()  # doctest: +SKIP
            [('shirt', 'bag', 3), ('sandal', 'sneaker', 1)]
        """
        self._need_labels("most_confused")
        pairs = Counter((self.names(y), self.names(c))
                        for y, c in zip(self.labels, self.predicted, strict=True))
        found = [(label, predicted, count) for (label, predicted), count in pairs.items()
                 if label != predicted and count >= min_count]
        return sorted(found, key=lambda pair: (-pair[2], pair[0], pair[1]))

    def cam(self, layer: str | None = None) -> CamModel:
        """The Grad-CAM parts of the model for ``layer`` (built once per layer)."""
        if layer not in self._cams:
            self._cams[layer] = cam_model(self.model, layer)
        return self._cams[layer]

    def gradcam(self, indices: Sequence[int] | np.ndarray | None = None, *,
                layer: str | None = None, batch_size: int = 64) -> np.ndarray:
        """Grad-CAM heatmaps of the predicted class, ``(len(indices), H, W)`` float32.

        Args:
            indices: image indices, optional. Defaults to every image.
            layer: str, optional. Layer of the feature map (``--gradcam-layer``).
                Defaults to the backbone's output (:mod:`kerastl.models.gradcam`).
            batch_size: int. Images per gradient pass.

        Raises:
            ConfigError: the layer has no spatial map (the message says what to do).
        """
        indices = np.arange(len(self.files)) if indices is None else np.asarray(indices)
        cam = self.cam(layer)
        if self.task == "multilabel":
            classes = np.argmax(self.probabilities, axis=1)  # the most likely label
        else:
            classes = self.predicted
        subset = self.data.subset(indices)
        bar = Progress(len(indices), "Grad-CAM")

        def batches():
            for x, _ in subset.batches(self.image_size, batch_size):
                yield x
                bar.update(int(x.shape[0]))
            bar.close()

        started = time.perf_counter()
        heatmaps = gradcam_heatmaps(cam, batches(), classes[indices])
        self.seconds["Grad-CAM pass"] = (self.seconds.get("Grad-CAM pass", 0.0)
                                         + time.perf_counter() - started)
        return heatmaps

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 pixels ``(len(indices), H, W, 3)`` at the model's input size."""
        subset = self.data.subset(np.asarray(indices, np.int64))
        batches = [np.asarray(x) for x, _ in subset.batches(self.image_size, 256)]
        if not batches:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return np.clip(np.concatenate(batches), 0, 255).astype(np.uint8)

    def plot_top_losses(self, k: int = 9, *, gradcam: bool = True,
                        layer: str | None = None, heatmaps: np.ndarray | None = None,
                        ) -> Figure:
        """A grid of the ``k`` highest-loss images, fastai style, Grad-CAM over each.

        Each title reads ``predicted / actual / loss / probability of actual``.

        Args:
            k: int. Images in the grid. Defaults to 9.
            gradcam: bool. Overlay each image's Grad-CAM (left out, with a note in
                the figure's title, when the model has no spatial map).
            layer: str, optional. Layer of the feature map.
            heatmaps: array, optional. Heatmaps of the top losses already computed.

        Returns:
            A matplotlib Figure (shown inline by Jupyter).
        """
        indices = self.top_loss_indices(k)
        images = self.images(indices)
        title = "predicted / actual / loss / probability of actual"
        if gradcam and heatmaps is None and len(indices):
            try:
                heatmaps = self.gradcam(indices, layer=layer)
            except ConfigError as error:
                title += f"\n(no Grad-CAM: {str(error).split(':')[0]})"
        columns = max(1, min(4, len(indices)))
        rows = max(1, -(-len(indices) // columns))
        figure = Figure(figsize=(2.2 * columns, 2.5 * rows + 0.5))
        figure.suptitle(title, fontsize=10)
        losses, p_label, predicted = self.losses, self.p_label, self.predicted
        for slot, i in enumerate(indices):
            ax = figure.add_subplot(rows, columns, slot + 1)
            ax.imshow(images[slot])
            if gradcam and heatmaps is not None:
                ax.imshow(heatmaps[slot], cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0,
                          interpolation="bilinear")
            ax.set_title(f"{self.names(predicted[i])} / {self.names(self.labels[i])} /\n"
                         f"{losses[i]:.2f} / {p_label[i]:.2f}", fontsize=9)
            ax.set_axis_off()
        # Fixed margins: tight_layout measured at 0.6 s of a 16-image grid.
        figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (
            2.5 * rows + 0.5), wspace=0.08, hspace=0.45)
        return figure

    def summary(self, k: int = TOP_LOSSES) -> dict:
        """``interpretation.json``'s content: ``top_losses`` and ``most_confused``."""
        return {
            "top_losses": [{key: row[key] for key in ("file", "label", "predicted", "loss")}
                           for row in self.top_losses(k)],
            "most_confused": [{"label": a, "predicted": b, "count": n}
                              for a, b, n in self.most_confused()],
            "loss": "-ln(p_label)" if self.task != "multilabel"
                    else "summed binary cross-entropy over the labels",
            "notes": list(self.notes),
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
        }

    def _need_labels(self, what: str) -> None:
        if not self.labelled:
            raise DataError(f"{what} needs labelled images; these were given without labels.")


def interpret(model_or_run: Any, data: Any, *, class_names: Sequence[str] | None = None,
              task: str | None = None, batch_size: int = 64, labelled: bool = True,
              progress: bool = True) -> Interpretation:
    """Run a model once over labelled images and keep what it got wrong.

    Args:
        model_or_run: a keras.Model, a ``model.keras`` path, a run folder (holding
            ``model.keras`` and ``labels.json``) or a :class:`~kerastl.RunResult`.
        data: a folder of class subfolders, an :class:`~kerastl.ImageData`, or an
            ``(images, labels)`` tuple of arrays.
        class_names: sequence of str, optional. Defaults to the run's
            ``labels.json``; a plain Keras model without one gets the folder's
            sorted subfolder names (Keras' ``image_dataset_from_directory`` order) or
            class ids.
        task: str, optional. Defaults to the run's, else ``"multiclass"`` (one sigmoid
            unit: ``"binary"``).
        batch_size: int. Images per forward pass. Defaults to 64.
        labelled: bool. False for images without labels (``predict``).
        progress: bool. Show a progress bar on a terminal. Defaults to True.

    Returns:
        An :class:`Interpretation`.

    Raises:
        DataError: an empty folder, classes that differ from the model's, or a class
            count the model does not output (one line each).

    Example:
        >>> interp = kerastl.interpret("runs/latest", "data/test")  # doctest: +SKIP
        >>> interp.most_confused()[:3]  # doctest: +SKIP
        >>> interp.plot_top_losses(9)  # doctest: +SKIP
    """
    model, labels, notes = load_for_interpretation(model_or_run)
    outputs = int(model.output_shape[-1])
    names = list(class_names) if class_names is not None else (
        labels["class_names"] if labels else None)
    task = task or (labels or {}).get("task") or ("binary" if outputs == 1 else "multiclass")
    root = None
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        if names is None:
            data = read_data(data)
            wanted = 2 if task == "binary" else outputs
            if len(data.class_names) != wanted:
                raise DataError(
                    f"The model outputs {wanted} classes but {str(root)!r} has "
                    f"{len(data.class_names)} class folders ({data.class_names}), and there "
                    "is no labels.json to say which is which.")
            names = list(data.class_names)
            notes.append("no labels.json: class i is the i-th class folder in sorted order "
                         "(as keras.utils.image_dataset_from_directory)")
        else:
            data = read_data(data, class_names=names)
    elif not is_image_data(data):
        images, ids = data if isinstance(data, tuple) else (data, None)
        if ids is None:
            ids, labelled = np.zeros(len(images), np.int64), False
        data = from_arrays(np.asarray(images), ids, class_names=names)
    if names is None:
        names = list(data.class_names) if len(data.class_names) == (
            2 if task == "binary" else outputs) else [str(i) for i in range(
                2 if task == "binary" else outputs)]
    if len(data) == 0:
        raise DataError("No images to interpret.")
    started = time.perf_counter()
    probabilities = predict_probabilities(model, data, batch_size=batch_size,
                                          progress=progress)
    return Interpretation(model, data, list(names), task, probabilities,
                          display_names(data, root), labelled=labelled, notes=notes,
                          seconds={"prediction pass": time.perf_counter() - started})


def load_for_interpretation(model_or_run: Any) -> tuple[keras.Model, dict | None, list[str]]:
    """``(model, labels.json or None, notes)`` of a model, model file, run folder or result.

    Raises:
        FileNotFoundError: no such model file or run folder.
    """
    if isinstance(model_or_run, keras.Model):
        return model_or_run, None, []
    if hasattr(model_or_run, "model") and hasattr(model_or_run, "output_dir"):  # RunResult
        labels = RunDir(Path(model_or_run.output_dir)).read_labels(required=False) or {
            "class_names": list(model_or_run.class_names), "task": model_or_run.config.task}
        return model_or_run.model, labels, []
    path = Path(model_or_run)
    run = RunDir.of(path)
    path = run.model_file if path.is_dir() else path
    model = load_model(path, compile=False)
    labels = run.read_labels(required=False)
    if labels is not None:
        return model, labels, []
    return model, None, [f"no labels.json next to {str(path)!r}: a plain Keras model, "
                         "classes named by id or by folder order"]


def display_names(data: Any, root: str | os.PathLike | None = None) -> list[str]:
    """Each image's name: its path relative to the data folder, or its index."""
    if data.files is None:
        return [str(i) for i in range(len(data))]
    if root is None:  # the folder above the class folders
        parents = {os.path.dirname(os.path.dirname(os.path.abspath(f))) for f in data.files}
        root = os.path.commonpath(sorted(parents))
    return [Path(os.path.relpath(os.path.abspath(f), os.path.abspath(root))).as_posix()
            for f in data.files]

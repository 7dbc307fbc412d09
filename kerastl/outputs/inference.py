"""Use a saved run: evaluate on a folder, predict files, always loading safely."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.errors import DataError
from ..core.files import atomic_write_text
from ..data.image_data import ImageData
from ..data.images import SUPPORTED_EXTENSIONS, find_bad_files
from ..models.forward import predict
from ..training.losses import evaluation_losses
from .interpretation import Interpretation, interpret, load_for_interpretation
from .interpretation_files import write_interpretation
from .report_page import write_report
from .reports import classification_metrics, write_evaluation
from .run_dir import RunDir


def model_file(path: str | os.PathLike) -> Path:
    """The ``model.keras`` of a run folder, or ``path`` itself when it is a file.

    Raises:
        DataError: nothing at ``path``, or a folder without ``model.keras``.

    Example:
        >>> model_file("runs/nope")
        Traceback (most recent call last):
        ...
        kerastl.core.errors.DataError: model not found: runs/nope
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model.keras").is_file():
            raise DataError(f"no model.keras in the folder {str(path)!r}: pass a finished "
                            "kerastl run folder or a model.keras file.")
        return path / "model.keras"
    if not path.exists():
        raise DataError(f"model not found: {path}")
    return path


def load_run_labels(model_path: str | os.PathLike) -> dict:
    """``labels.json`` written next to ``model.keras`` by a kerastl run (or in its folder)."""
    return RunDir.of(model_file(model_path)).read_labels()


def evaluate_folder(model_path, data_dir, *, output=None, batch_size: int = 64,
                    top_losses: int = 16, gradcam: str = "top",
                    gradcam_layer: str | None = None) -> dict:
    """Metrics of a saved model on a folder of class subfolders, and what it got wrong.

    With ``output``: also ``predictions.csv``, ``interpretation.json``,
    ``top_losses.png``, ``gradcam.npz``
    (:func:`kerastl.outputs.interpretation_files.write_interpretation`) and ``report.html``
    (with the unfreeze plan and choices of the run that holds the model, and this
    evaluation's timings). A plain Keras model without ``labels.json`` is evaluated with
    the folder's sorted class folders as its classes (noted in the report).

    Args:
        model_path: a run's ``model.keras`` (``labels.json`` beside it), or a run folder.
        data_dir: folder of class subfolders (the model's classes).
        output: folder, optional. Where the files go.
        batch_size: int. Images per forward pass.
        top_losses: int. Images in the top losses. Defaults to 16.
        gradcam: str. ``"top"``, ``"all"`` or ``"none"``: whose Grad-CAM to write.
        gradcam_layer: str, optional. Layer of the feature map (default: the backbone's
            output).

    Example:
        >>> evaluate_folder("runs/latest/model.keras",
        ...                 "data_samples/fashion/test")  # doctest: +SKIP
    """
    model, labels, notes = load_for_interpretation(model_file(model_path))
    interp = interpret(model, data_dir, batch_size=batch_size,
                       class_names=(labels or {}).get("class_names"),
                       task=(labels or {}).get("task"))
    interp.notes[:0] = notes
    task = interp.task
    probs = interp.probabilities[:, 1:] if task == "binary" else interp.probabilities
    y = interp.labels
    # The run's loss definition (label smoothing, class weights), as in its metrics.json.
    losses = evaluation_losses(task, y, probs, **(labels or {}).get("loss", {}))
    loss = losses.pop("loss")
    if output is None:
        return {"loss": loss, **classification_metrics(y, probs, interp.class_names,
                                                       task=task), **losses}

    metrics = write_evaluation(output, y, probs, interp.class_names, task=task,
                               loss=loss, extra=losses)
    write_interpretation(output, interp, top_losses=top_losses, gradcam=gradcam,
                         gradcam_layer=gradcam_layer)
    write_report(output, title=f"Evaluation of {model_path} on {data_dir}",
                 model_run=model_file(model_path).parent)
    return metrics


def predict_paths(model_path, inputs: Sequence[str], *, output=None, batch_size: int = 64) -> str:
    """CSV (path, predicted class, one probability column per class) for files/folders.

    Args:
        model_path: path of a run's ``model.keras`` (``labels.json`` beside it; without
            one, a plain Keras model, classes are named by id).
        inputs: image files and/or folders (searched recursively, hidden files skipped).
        output: path, optional. Also write the CSV there (atomically). A path not
            ending in ``.csv`` is a folder: ``OUTPUT/predictions.csv`` gets
            ``file,predicted,p_predicted`` (files relative to the folder they were
            found in), as ``evaluate``'s without the label columns.
        batch_size: int. Images per forward pass.

    Returns:
        The CSV text.

    Example:
        >>> print(predict_paths("runs/latest/model.keras", ["photo.jpg"]))  # doctest: +SKIP
        path,class,p_bag,p_sandal
        photo.jpg,bag,0.981200,0.018800
    """
    # A plain Keras model (no labels.json) predicts class ids.
    model, labels, _ = load_for_interpretation(model_file(model_path))
    units = int(model.output_shape[-1])
    labels = labels or {"class_names": [str(i) for i in range(max(units, 2))]}
    names = labels["class_names"]
    files, shown = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in SUPPORTED_EXTENSIONS
                           and not any(part.startswith(".") for part in p.parts))
            files += [str(p) for p in found]
            shown += [p.relative_to(path).as_posix() for p in found]
        elif path.is_file():
            files.append(str(path))
            shown.append(str(item))
        else:
            raise DataError(f"No such file or folder: {item!r}.")
    if not files:
        raise DataError(f"No images found in {list(inputs)!r}.")
    bad = find_bad_files(files)
    if bad:
        raise DataError("Cannot read these images: " + "; ".join(
            f"{path}: {reason}" for path, reason in bad.items()))
    data = ImageData(class_names=list(names), labels=np.zeros(len(files), dtype="int64"),
                     files=files)
    probs, _ = predict(model, data.batches(int(model.input_shape[1]), batch_size))
    if probs.shape[1] == 1:  # binary: one sigmoid unit for the second class
        probs = np.concatenate([1 - probs, probs], axis=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "class", *[f"p_{n}" for n in names]])
    for path, row in zip(data.files, probs, strict=True):
        writer.writerow([path, names[int(np.argmax(row))], *[f"{p:.6f}" for p in row]])
    text = buffer.getvalue()
    if output is not None and not str(output).lower().endswith(".csv"):
        write_interpretation(output, Interpretation(model, data, list(names), labels.get(
            "task", "multiclass"), probs, shown, labelled=False))
    elif output is not None:
        atomic_write_text(output, text)
    return text

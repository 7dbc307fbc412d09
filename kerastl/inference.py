"""Use a saved run: evaluate on a folder, predict files, always loading safely."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _backend  # noqa: F401
from .errors import DataError
from .model import load_model
from .training import evaluation_losses, predict


def model_file(path: str | os.PathLike) -> Path:
    """The ``model.keras`` of a run folder, or ``path`` itself when it is a file.

    Raises:
        DataError: nothing at ``path``, or a folder without ``model.keras``.

    Example:
        >>> model_file("runs/nope")
        Traceback (most recent call last):
        ...
        kerastl.errors.DataError: model not found: runs/nope
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
    path = model_file(model_path).with_name("labels.json")
    if not path.is_file():
        raise DataError(
            f"No labels.json next to {str(model_path)!r}; kerastl writes it with model.keras. "
            "Copy it alongside the model."
        )
    return json.loads(path.read_text())


def evaluate_folder(model_path, data_dir, *, output=None, batch_size: int = 64) -> dict:
    """Metrics of a saved model on a folder of class subfolders.

    Example:
        >>> evaluate_folder("runs/latest/model.keras",
        ...                 "data_samples/fashion/test")  # doctest: +SKIP
    """
    from .data import from_folder
    from .reports import classification_metrics, write_evaluation

    labels = load_run_labels(model_path)
    model = load_model(model_file(model_path), compile=False)
    data = from_folder(data_dir, class_names=labels["class_names"])
    size = int(model.input_shape[1])
    probs, y = predict(model, data.batches(size, batch_size), label="Evaluating")
    task = labels.get("task", "multiclass")
    # The run's loss definition (label smoothing, class weights), as in its metrics.json.
    losses = evaluation_losses(task, y, probs, **labels.get("loss", {}))
    loss = losses.pop("loss")
    if output is not None:
        return write_evaluation(output, y, probs, labels["class_names"], task=task,
                                loss=loss, extra=losses)
    return {"loss": loss, **classification_metrics(y, probs, labels["class_names"], task=task),
            **losses}


def predict_paths(model_path, inputs: Sequence[str], *, output=None, batch_size: int = 64) -> str:
    """CSV (path, predicted class, one probability column per class) for files/folders.

    Args:
        model_path: path of a run's ``model.keras`` (``labels.json`` beside it).
        inputs: image files and/or folders (searched recursively, hidden files skipped).
        output: path, optional. Also write the CSV there (atomically).
        batch_size: int. Images per forward pass.

    Returns:
        The CSV text.

    Example:
        >>> print(predict_paths("runs/latest/model.keras", ["photo.jpg"]))  # doctest: +SKIP
        path,class,p_bag,p_sandal
        photo.jpg,bag,0.981200,0.018800
    """
    from .data import ImageData
    from .images import SUPPORTED_EXTENSIONS, find_bad_files

    labels = load_run_labels(model_path)
    names = labels["class_names"]
    model = load_model(model_file(model_path), compile=False)
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*")
                            if p.suffix.lower() in SUPPORTED_EXTENSIONS
                            and not any(part.startswith(".") for part in p.parts))
        elif path.is_file():
            files.append(str(path))
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
    if output is not None:
        from .outputs import atomic_write_text

        atomic_write_text(output, text)
    return text

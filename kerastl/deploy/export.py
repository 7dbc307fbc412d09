"""From a trained run to a deployable file: SavedModel, LiteRT (TFLite) or ONNX, verified.

:func:`export` converts a run's ``model.keras`` with Keras's own
``model.export(format=...)`` (the TensorFlow Lite converter for LiteRT, with
float16, dynamic-range or full-integer int8 quantization), then checks the file
with its own runtime (``ai-edge-litert``'s interpreter, ``onnxruntime``,
``tf.saved_model.load``) on the run's test split (else validation): accuracy of the
exported model beside the Keras model's, agreement of their predictions, file sizes
and single-image latency, written to ``export_report.json`` next to the file.

Full-integer quantization is calibrated on a sample of the run's *training* images
(never the evaluation split), drawn with the run's seed so the same run gives the
same calibration. The exported model keeps float32 input and output: it takes raw
RGB pixels in ``[0, 255]`` like ``model.keras`` (preprocessing is inside), and
LiteRT quantizes them on entry.

An export lands in its own folder (``RUN_DIR/exports/<format>[-<quantize>]`` by
default) holding the file, ``labels.json`` and ``export_report.json``; it is built
under a temporary name and renamed into place, and an existing export is never
replaced unless ``overwrite=True``.

Example:
    >>> import kerastl
    >>> report = kerastl.export("runs/latest", "litert", "int8")  # doctest: +SKIP
    >>> report.exported_accuracy, report.bytes["ratio"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_directory, atomic_write_json
from ..core.version import __version__
from ..data.image_data import ImageData
from ..data.splits import DataSplits, load_splits
from ..models.build import load_model
from ..models.forward import predict as keras_predict
from ..outputs.reports import classification_metrics
from ..outputs.run_dir import RunDir
from .convert import convert, float32_copy, policy_name, strip_tensor_names
from .exported_runtime import (
    DISTRIBUTIONS,
    LATENCY_RUNS,
    RUN_NEEDS,
    agreeing,
    file_sizes,
    latency,
    load_runtime,
    require_modules,
)

FORMATS = ("savedmodel", "litert", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
CALIBRATION_IMAGES = 200  # the TensorFlow Lite guide suggests a few hundred
# Packages each format needs: to convert, and to run the result for verification.
_CONVERT_NEEDS = {"savedmodel": (), "litert": (), "onnx": ("tf2onnx", "onnx")}


@dataclass
class ExportReport:
    """What :func:`export` wrote and measured (also ``export_report.json``).

    Attributes:
        path: str. The exported file (a folder for SavedModel).
        format: str. ``"savedmodel"``, ``"litert"`` or ``"onnx"``.
        quantize: str. ``"none"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        input: dict. Shape, dtype and meaning of the model input.
        evaluated_on: str or None. ``"test"`` or ``"validation"``; None unverified.
        examples: int. Images the two models were compared on.
        keras_policy: str. Dtype policy ``model.keras`` computes under
            (``"mixed_bfloat16"`` when the run trained so); converters always get a
            float32 copy of it (:func:`float32_copy`).
        keras_accuracy: float or None. The run's ``model.keras`` on those images.
        exported_accuracy: float or None. The exported file, with its own runtime.
        agreement: float or None. Share of images where the export and
            ``model.keras`` predict the same.
        keras_float32_accuracy, agreement_float32: float or None. The same against
            the float32 copy that was converted, when ``keras_policy`` is not
            float32: the conversion's own fidelity, without the 16-bit rounding.
        max_abs_difference: float or None. Largest difference of an output value
            from the float32 Keras model.
        bytes: dict. ``keras``, ``exported``, their ``gzip`` sizes and ``ratio``
            (keras / exported).
        latency_ms: dict. Median single-image latency of ``keras_predict``
            (``model.predict``), ``keras_call`` (a compiled call) and ``exported``.
        calibration: dict or None. For int8: how many training images, which seed.
        tensor_names: str. LiteRT: ``"stripped"`` (the default) or ``"kept"``.
        versions: dict. Of everything that converted and ran the model.
        seconds: float. Wall time of the export.
    """

    path: str
    format: str
    quantize: str
    input: dict
    evaluated_on: str | None = None
    examples: int = 0
    keras_policy: str = "float32"
    keras_accuracy: float | None = None
    exported_accuracy: float | None = None
    agreement: float | None = None
    keras_float32_accuracy: float | None = None
    agreement_float32: float | None = None
    max_abs_difference: float | None = None
    bytes: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    calibration: dict | None = None
    tensor_names: str | None = None
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Run:
    """A kerastl run directory, read."""

    directory: Path
    model: keras.Model
    labels: dict
    config: dict


# ------------------------------------------------------------------ the command
def export(
    run_dir: str | os.PathLike,
    format: str = "litert",
    quantize: str = "none",
    *,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    splits: DataSplits | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    verify: bool = True,
    latency_runs: int = LATENCY_RUNS,
    num_threads: int | None = None,
    keep_names: bool = False,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export a run's model to SavedModel, LiteRT or ONNX and verify the file.

    Args:
        run_dir: path. A kerastl run directory (``model.keras``, ``labels.json``,
            ``config.yaml``).
        format: str. ``"savedmodel"``, ``"litert"`` (``.tflite``) or ``"onnx"``.
            Defaults to ``"litert"``.
        quantize: str. LiteRT only: ``"none"``, ``"float16"`` (weights),
            ``"dynamic"`` (int8 weights, float activations) or ``"int8"`` (full
            integer, calibrated on training images). Defaults to ``"none"``.
        output: path, optional. Folder for the export. Defaults to
            ``run_dir/exports/<format>[-<quantize>]``.
        overwrite: bool. Replace an existing export folder. Defaults to False.
        splits: DataSplits, optional. The run's data, for runs trained on in-memory
            splits (``fit(splits=...)``) or whose folders moved. Defaults to the
            folders recorded in ``config.yaml``.
        calibration_images: int. Training images drawn for int8 calibration.
        verify: bool. Run the exported file on the test (else validation) split
            and compare it with the Keras model. Defaults to True.
        latency_runs: int. Timed single-image calls per model.
        num_threads: int, optional. Threads of the LiteRT/ONNX runtime. Defaults
            to every core.
        keep_names: bool. LiteRT: keep the tensor names (for Netron or the model
            analyzer). Defaults to False: names are stripped (:func:`strip_tensor_names`).
        log: callable. Progress lines.

    Returns:
        The :class:`ExportReport` (also written as ``export_report.json``).

    Raises:
        ConfigError: not a kerastl run, unknown format or quantization, an
            existing export.
        DataError: the data that int8 calibration or verification needs is missing.
        MissingDependencyError: an optional package is missing
            (``pip install 'kerastl[export]'``).

    Example:
        >>> report = export("runs/latest", "onnx")  # doctest: +SKIP
        >>> report.agreement  # doctest: +SKIP
        1.0
    """
    started = time.perf_counter()
    _check_choices(format, quantize)
    run = _read_run(run_dir)
    target = Path(output) if output is not None else default_output(run.directory, format,
                                                                    quantize)
    require_modules(_CONVERT_NEEDS[format] + (RUN_NEEDS[format] if verify else ()), format)
    _check_target(target, overwrite)
    splits = splits if splits is not None else (
        _run_splits(run, need_train=quantize == "int8", need_eval=verify)
        if (verify or quantize == "int8") else None)
    size = int(run.labels.get("image_size") or run.model.input_shape[1])
    calibration = None
    if quantize == "int8":
        calibration = _calibration_sample(splits, size, calibration_images,
                                          int(run.config.get("seed", 0)))
    # Written into a staging directory that replaces the target only once complete.
    with atomic_directory(target) as staging:
        log(f"Exporting {run.directory / 'model.keras'} to {format}"
            + (f" ({quantize})" if quantize != "none" else "") + " ...")
        name = convert(run.model, staging, format, quantize,
                       calibration[0] if calibration else None)
        names = None
        if format == "litert":
            names = "kept" if keep_names else "stripped"
            if not keep_names:
                strip_tensor_names(staging / name)
        report = ExportReport(
            path=str(target / name), format=format, quantize=quantize,
            input={"shape": list(run.model.input_shape), "dtype": "float32",
                   "pixels": "RGB in [0, 255]; preprocessing is inside the model",
                   "output": "class probabilities" if run.labels.get("task", "multiclass")
                   == "multiclass" else "sigmoid probabilities"},
            calibration=calibration[1] if calibration else None,
            tensor_names=names,
            bytes=file_sizes(run.directory / "model.keras", staging / name),
            keras_policy=policy_name(run.model),
            versions=_versions(format),
        )
        if verify:
            _verify(report, run, staging / name, splits, size, latency_runs,
                    num_threads or os.cpu_count() or 1)
        report.seconds = round(time.perf_counter() - started, 3)
        shutil.copy2(run.directory / "labels.json", staging / "labels.json")
        atomic_write_json(staging / "export_report.json", report.to_dict())
    log(summary_line(report))
    return report


def summary_line(report: ExportReport) -> str:
    """One line for the console: size, accuracy, agreement, latency."""
    sizes = report.bytes
    text = (f"{report.path}: {sizes['exported'] / 1e6:.2f} MB ({sizes['ratio']:.2f}x smaller "
            f"than model.keras)")
    if report.evaluated_on is not None:
        text += (f"; {report.evaluated_on} accuracy {report.exported_accuracy:.4f} vs Keras "
                 f"{report.keras_accuracy:.4f}, same prediction on {report.agreement:.2%} of "
                 f"{report.examples} images")
        if report.agreement_float32 is not None:
            text += (f" ({report.agreement_float32:.2%} against the float32 copy of the "
                     f"{report.keras_policy} model that was converted)")
        text += ("; single-image latency "
                 f"{report.latency_ms['exported']:.2f} ms vs Keras predict "
                 f"{report.latency_ms['keras_predict']:.2f} ms")
    return text


def default_output(run_dir: str | os.PathLike, format: str, quantize: str) -> Path:
    """``RUN_DIR/exports/<format>`` or ``RUN_DIR/exports/<format>-<quantize>``.

    Example:
        >>> default_output("runs/a", "litert", "int8").as_posix()
        'runs/a/exports/litert-int8'
    """
    return Path(run_dir) / "exports" / (format if quantize == "none" else f"{format}-{quantize}")


# ------------------------------------------------------------------ checks
def _check_choices(format: str, quantize: str) -> None:
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}; received format={format!r}.")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(
            f"quantize must be one of {QUANTIZATIONS}; received quantize={quantize!r}."
        )
    if quantize != "none" and format != "litert":
        raise ConfigError(
            f"quantize={quantize!r} applies to format='litert' (the TensorFlow Lite "
            f"converter quantizes); received format={format!r}. Export {format} with "
            "quantize='none', or use --format litert."
        )


def _read_run(run_dir: str | os.PathLike) -> _Run:
    directory = Path(run_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"Run directory {str(directory)!r} does not exist. Pass the --output folder of "
            "a finished `python -m kerastl.train` run."
        )
    if (directory / "sklearn_classifier").is_dir():
        raise ConfigError(
            f"{str(directory)!r} holds a scikit-learn head (--head sklearn-...), which has no "
            "Keras model to export; train with a Keras head (--head avg) to export."
        )
    run = RunDir(directory)
    run.check_finished("Export")
    return _Run(directory, load_model(run.model_file, compile=False), run.read_labels(),
                run.read_config())


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise ConfigError(
            f"Export folder {str(target)!r} already exists; kerastl never replaces an export "
            "silently. Pass overwrite=True (--overwrite) to replace it, or another --output."
        )


# ------------------------------------------------------------------ data
def run_splits_from(run_dir: str | os.PathLike, data: str | None = None,
                    val_data: str | None = None, test_data: str | None = None
                    ) -> DataSplits | None:
    """The run's splits with some folders replaced (data that moved); None if none given.

    The held-out validation share and its seed come from the run's ``config.yaml``,
    so a validation split carved from ``data`` is the one the run held out.
    """
    if data is None and val_data is None and test_data is None:
        return None
    directory = Path(run_dir)
    config = RunDir(directory).read_config()
    overrides = {"data": data, "val_data": val_data, "test_data": test_data}
    config = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    return _splits_from_config(directory, config, need_train=True)


def _run_splits(run: _Run, *, need_train: bool, need_eval: bool) -> DataSplits:
    """The run's splits from the folders its ``config.yaml`` records."""
    del need_eval  # the evaluation split always comes with the training folder
    return _splits_from_config(run.directory, run.config, need_train=need_train)


def _splits_from_config(directory: Path, config: dict, *, need_train: bool) -> DataSplits:
    train_dir = config.get("data")
    if train_dir is None:
        raise DataError(
            f"The run in {str(directory)!r} was trained on in-memory data "
            "(fit(splits=...)); config.yaml records no folders. Pass the same splits: "
            "kerastl.export(run_dir, ..., splits=splits)."
        )
    folders = {"data": train_dir, "val_data": config.get("val_data"),
               "test_data": config.get("test_data")}
    gone = {k: v for k, v in folders.items() if v is not None and not Path(v).is_dir()}
    if gone:
        why = ("int8 calibration needs the run's training images" if need_train
               else "verification needs the run's test or validation images")
        raise DataError(
            f"{why}, but these folders from config.yaml are missing: {gone}. Pass the data "
            "again (--data/--val-data/--test-data DIR), "
            + ("or choose --quantize dynamic or float16, which need no calibration."
               if need_train else "or --no-verify to skip verification.")
        )
    return load_splits(train_dir, val_dir=folders["val_data"], test_dir=folders["test_data"],
                       val_split=config.get("val_split", 0.2), seed=int(config.get("seed", 0)),
                       on_bad_file=config.get("on_bad_file", "error"),
                       check_files=config.get("check_files", "full"),
                       decoded_memory=config.get("decoded_memory", "auto"))


def calibration_indices(n_train: int, count: int, seed: int) -> np.ndarray:
    """Which training images calibrate int8: ``count`` of them, drawn with ``seed``.

    Example:
        >>> calibration_indices(10, 4, seed=0).tolist() == calibration_indices(10, 4, 0).tolist()
        True
    """
    count = min(int(count), int(n_train))
    if count < 1:
        raise DataError(
            f"int8 calibration needs at least one training image; received {n_train} "
            f"training images and calibration_images={count}."
        )
    return np.sort(np.random.default_rng(seed).choice(n_train, size=count, replace=False))


def _calibration_sample(splits: DataSplits, size: int, count: int, seed: int):
    indices = calibration_indices(len(splits.train), count, seed)
    images = _images(splits.train.subset(indices), size)
    return images, {"images": int(len(indices)), "seed": seed, "split": "train",
                    "indices_sha256": _digest(indices)}


def _images(data: ImageData, size: int, batch: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(x) for x, _ in data.batches(size, batch)])


def _digest(values: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values, np.int64).tobytes()).hexdigest()


# ------------------------------------------------------------------ verification
def _verify(report: ExportReport, run: _Run, path: Path, splits: DataSplits, size: int,
            latency_runs: int, threads: int) -> None:
    evaluation = splits.test if splits.test is not None else splits.val
    if evaluation is None or not len(evaluation):
        raise DataError(
            "Verification needs a test or validation split and the run has neither; pass "
            "splits= (or --test-data DIR), or verify=False (--no-verify)."
        )
    task = run.labels.get("task", "multiclass")
    names = list(run.labels.get("class_names") or splits.class_names)
    batches = evaluation.batches(size, 32)
    expected, labels = keras_predict(run.model, batches)
    runtime = load_runtime(path, report.format, threads)
    images = _images(evaluation, size, batch=32)
    outputs = np.concatenate([runtime(images[i:i + 32]) for i in range(0, len(images), 32)])
    outputs = outputs.reshape(expected.shape)

    def accuracy(probs: np.ndarray) -> float:
        return classification_metrics(labels, probs, names, task=task)["accuracy"]

    report.evaluated_on = "test" if splits.test is not None else "validation"
    report.examples = int(len(labels))
    report.keras_accuracy, report.exported_accuracy = accuracy(expected), accuracy(outputs)
    report.agreement = float(np.mean(agreeing(task, expected, outputs)))
    reference = expected
    if report.keras_policy != "float32":
        reference = keras_predict(float32_copy(run.model), batches)[0]
        report.keras_float32_accuracy = accuracy(reference)
        report.agreement_float32 = float(np.mean(agreeing(task, reference, outputs)))
    report.max_abs_difference = float(np.max(np.abs(reference - outputs)))
    report.latency_ms = latency(run.model, runtime, images[:1], latency_runs)
    report.latency_ms["threads"] = threads


def _versions(format: str) -> dict[str, str]:
    versions = {"kerastl": __version__, "tensorflow": tf.__version__,
                "keras": keras.__version__, "numpy": np.__version__,
                "python": sys.version.split()[0], "platform": platform.platform()}
    for module in _CONVERT_NEEDS[format] + RUN_NEEDS[format]:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[module] = importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    return versions

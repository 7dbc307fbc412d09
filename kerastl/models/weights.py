"""Pretrained weights: ImageNet downloads, local files, and the errors around them.

Keras Applications download their weights on first use and report a failure as a
bare ``Exception("URL fetch failure ...")``; a truncated or mismatched file surfaces
as an h5py ``OSError`` or a long ``ValueError``. kerastl turns each into one
:class:`~kerastl.core.errors.WeightsError` that names the file and the remedy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import yaml

from ..core import backend as _backend  # noqa: F401
from ..core.errors import WeightsError
from ..core.files import atomic_file
from .backbones import Backbone

# The base weights every run writes, usable as --weights of another run.
RUN_WEIGHTS_FILE = "backbone.weights.h5"
_URL = re.compile(r"(https?://[^\s:]+(?::\d+)?[^\s:]*)")


def keras_cache_dir() -> Path:
    """Directory where Keras looks for downloaded application weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_base(
    backbone: Backbone,
    input_shape: tuple[int, int, int],
    weights: str | os.PathLike | None,
    *,
    weights_hash: str | None = None,
    **kwargs: Any,
) -> keras.Model:
    """Build a no-top base with ``"imagenet"``, ``None`` or a local weights file.

    Args:
        backbone: Backbone. Registry entry.
        input_shape: tuple. ``(height, width, 3)``.
        weights: ``"imagenet"``, ``None``, or a path to a ``.h5``/``.weights.h5``
            file holding weights for the same no-top architecture (any input size).
        weights_hash: str, optional. Expected SHA-256 of the weights file.
        **kwargs: extra constructor arguments (``alpha=0.35``, ``name=...``).

    Returns:
        The base model with weights loaded.

    Raises:
        WeightsError: download failed, the file is missing, truncated, has the
            wrong hash or belongs to another architecture.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return backbone.build_base(input_shape, None, **kwargs)
    if isinstance(weights, str) and weights == "imagenet":
        return _build_imagenet(backbone, input_shape, **kwargs)
    base = backbone.build_base(input_shape, None, **kwargs)
    load_weights_file(base, weights, backbone=backbone.name, weights_hash=weights_hash)
    return base


def _build_imagenet(backbone: Backbone, input_shape, **kwargs) -> keras.Model:
    try:
        return backbone.build_base(input_shape, "imagenet", **kwargs)
    except Exception as error:  # Keras raises a bare Exception for URL failures.
        if "URL fetch failure" not in str(error) and not isinstance(error, OSError):
            raise
        match = _URL.search(str(error))
        url = match.group(1) if match else "(the Keras Applications weights URL)"
        filename = url.rsplit("/", 1)[-1]
        raise WeightsError(
            f"Could not download ImageNet weights for {backbone.name}: {error}. "
            f"Remedies: (1) pass weights=PATH (CLI: --weights PATH) with a local "
            f"no-top weights file; or (2) copy {filename!r} from {url} into the Keras "
            f"cache directory {keras_cache_dir()} on a machine with network access."
        ) from error


def load_weights_file(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    backbone: str,
    weights_hash: str | None = None,
) -> None:
    """Load a weights file into ``model`` with errors a user can act on.

    Raises:
        WeightsError: the file is missing, has another suffix, fails the hash check,
            is not a readable HDF5 file (truncated download), or holds weights for a
            different architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Weights file not found: {str(path)!r}. Pass weights='imagenet', None, or "
            "the path of an existing .h5/.weights.h5 file."
        )
    if path.suffix not in (".h5", ".hdf5"):
        raise WeightsError(
            f"Weights file {str(path)!r} must end in .h5 or .weights.h5 (a Keras "
            "weights file for the no-top base)."
        )
    if weights_hash is not None:
        actual = file_sha256(path)
        if actual != weights_hash.lower():
            raise WeightsError(
                f"Weights file {str(path)!r} has SHA-256 {actual}, expected "
                f"{weights_hash}. The file is corrupt or not the one you meant."
            )
    try:
        # Keras only *warns* for parts of a file that match no layer; for a base
        # that must be fully pretrained that is an error.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
        skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)
                   or "mismatch" in str(w.message).lower()]
        if skipped:
            raise ValueError(skipped[0])
    except OSError as error:
        raise WeightsError(
            f"Weights file {str(path)!r} is not a readable HDF5 file (truncated or "
            f"corrupt download?): {error}. Delete it and download or copy it again."
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise WeightsError(
            f"Weights file {str(path)!r} does not match the {backbone} base "
            f"(include_top=False): {first_line} Use the file saved for this backbone "
            "(e.g. backbone.weights.h5 from a kerastl run with the same --backbone)."
        ) from error


def has_pretrained_weights(weights: str | os.PathLike | None) -> bool:
    """Whether ``weights`` give the base anything learned: not None, not a random init.

    ``--mode auto`` warms a head on frozen features, then fine-tunes with BatchNorm in
    inference mode; on random weights that network never learns (loss stays at
    ln K, issue 27), so a run without pretrained weights trains from scratch instead.

    Example:
        >>> has_pretrained_weights(None), has_pretrained_weights("imagenet")
        (False, True)
    """
    if weights is None or str(weights) == "imagenet":
        return weights is not None
    return not untrained_weights_file(weights)


def untrained_weights_file(path: str | os.PathLike) -> bool:
    """Whether a ``.weights.h5`` file holds a BatchNorm network that never trained.

    A network that saw no data keeps every BatchNorm's initial moving statistics
    (mean 0, variance 1); one training step moves them. A file without BatchNorm
    layers (VGG), or one h5py cannot read, is taken as trained: the build reports
    an unreadable file with its own error. The answer is kept per file and
    modification time: the image size, the plan and the network check all ask.
    """
    try:
        stamp = os.path.getmtime(path)
    except OSError:
        return False
    return _untrained_at(os.fspath(path), stamp)


@functools.lru_cache(maxsize=16)
def _untrained_at(path: str, stamp: float) -> bool:
    try:
        import h5py

        moments = []
        with h5py.File(path, "r") as handle:
            def collect(name: str, item: Any) -> None:
                if (isinstance(item, h5py.Group) and name.rsplit("/", 1)[-1]
                        .startswith("batch_normalization") and "vars" in item
                        and len(item["vars"]) == 4):
                    moments.append((item["vars"]["2"][()], item["vars"]["3"][()]))

            handle.visititems(collect)
    except (OSError, ValueError, KeyError):
        return False
    import numpy as np

    return bool(moments) and all(np.all(mean == 0) and np.all(variance == 1)
                                 for mean, variance in moments)


def weights_record(weights: str | os.PathLike | None) -> dict[str, Any] | None:
    """What a weights file was saved from: backbone, its arguments, input size.

    kerastl records it next to every ``backbone.weights.h5`` it writes (the run's
    ``config.yaml``), and ``scripts/pretrain_source.py`` writes a JSON record
    beside its file (``<name>.json`` with ``weights_file``). So ``--weights
    runs/src/backbone.weights.h5`` is enough to rebuild the right architecture.

    Args:
        weights: ``"imagenet"``, None or a path.

    Returns:
        ``{"backbone", "backbone_kwargs", "input_size"}`` or None when the file has
        no record (or ``weights`` is not a file path).

    Example:
        >>> weights_record("imagenet") is None
        True
    """
    if weights is None or str(weights) == "imagenet":
        return None
    path = Path(weights)
    for meta in sorted(path.parent.glob("*.json")):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("weights_file") == path.name and "backbone" in info:
            return {"backbone": info["backbone"],
                    "backbone_kwargs": info.get("backbone_kwargs") or {},
                    "input_size": info.get("input_size")}
    saved = path.parent / "config.yaml"
    if path.name == RUN_WEIGHTS_FILE and saved.is_file():
        info = yaml.safe_load(saved.read_text()) or {}
        if isinstance(info, dict) and info.get("backbone"):
            return {"backbone": info["backbone"],
                    "backbone_kwargs": info.get("backbone_kwargs") or {},
                    "input_size": info.get("image_size")}
    return None


def save_base_weights(base: keras.Model, path: str | os.PathLike) -> Path:
    """Save the base's weights atomically (temporary file, then rename).

    Args:
        base: keras.Model. The backbone.
        path: path ending in ``.weights.h5``.

    Returns:
        The written path.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise WeightsError(f"Base weights path must end in .weights.h5; received {str(path)!r}.")
    with atomic_file(path, suffix=".weights.h5") as tmp:
        base.save_weights(str(tmp))
    return path

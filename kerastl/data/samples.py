"""The shipped samples: ``data_samples/`` and the source backbone pretrained on them.

With no ``--data``, a run trains on ``data_samples/fashion`` (five Fashion-MNIST
target classes) from the source backbone kerastl pretrained on the five other classes
(``scripts/pretrain_source.py``), so the README's first command runs offline.

Example:
    >>> (data_samples_dir() / "fashion" / "train").is_dir()
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_samples_dir() -> Path:
    """The shipped ``data_samples/`` folder (``$KERASTL_DATA_SAMPLES`` overrides)."""
    return Path(os.environ.get("KERASTL_DATA_SAMPLES", REPO_ROOT / "data_samples"))


def source_backbone() -> dict[str, Any] | None:
    """The shipped source backbone's record (``data_samples/source/*.json``), if any.

    The record names the backbone, its constructor arguments, input size, source
    classes and accuracy; ``weights`` is added with the weights file's path.
    """
    directory = data_samples_dir() / "source"
    for meta in sorted(directory.glob("*.json")):
        info = json.loads(meta.read_text())
        if "backbone" in info and "weights_file" in info:
            return {**info, "weights": str(directory / info["weights_file"])}
    return None


def sample_defaults(*, backbone: str | None, weights: Any, val_data: str | None,
                    test_data: str | None) -> dict[str, Any]:
    """What a run without ``data`` uses: the shipped samples and source backbone.

    Args:
        backbone, weights, val_data, test_data: the run's values; given ones are kept.

    Returns:
        The field values to set (``data``, and the folders and weights not given).

    Example:
        >>> sample_defaults(backbone=None, weights="imagenet", val_data=None,
        ...                 test_data=None)["data"].endswith("fashion/train")
        True
    """
    fashion = data_samples_dir() / "fashion"
    if not (fashion / "train").is_dir():
        raise ConfigError(
            f"No --data given and the shipped samples are missing at {str(fashion)!r}. "
            "Pass --data DIR (a folder of class subfolders), or set KERASTL_DATA_SAMPLES."
        )
    values: dict[str, Any] = {"data": str(fashion / "train")}
    for key, given, folder in (("val_data", val_data, fashion / "val"),
                               ("test_data", test_data, fashion / "test")):
        if given is None and folder.is_dir():
            values[key] = str(folder)
    source = source_backbone()
    if source and backbone is None and weights == "imagenet":
        values["weights"] = source["weights"]
        values["weights_hash"] = source.get("weights_sha256")
    return values

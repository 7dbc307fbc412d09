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
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import RunConfig

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


def apply_sample_defaults(config: RunConfig) -> None:
    """Point a config without ``data`` at the shipped samples and source backbone."""
    fashion = data_samples_dir() / "fashion"
    if not (fashion / "train").is_dir():
        raise ConfigError(
            f"No --data given and the shipped samples are missing at {str(fashion)!r}. "
            "Pass --data DIR (a folder of class subfolders), or set KERASTL_DATA_SAMPLES."
        )
    config.data = str(fashion / "train")
    for key, folder in (("val_data", fashion / "val"), ("test_data", fashion / "test")):
        if getattr(config, key) is None and folder.is_dir():
            setattr(config, key, str(folder))
    source = source_backbone()
    if source and config.backbone is None and config.weights == "imagenet":
        config.weights = source["weights"]
        config.weights_hash = source.get("weights_sha256")

"""What a run folder holds: the one contract between the run that writes it and the
commands that read it (``evaluate``, ``predict``, ``export``, ``compare``, reports).

A finished training run's folder holds ``model.keras`` (plain-Keras loadable),
``labels.json`` (class names, task, input size, the loss settings), ``config.yaml``
(the resolved configuration: ``--config`` reproduces the run), ``run.json`` (what
happened and why), ``metrics.json`` and the reports; an unfinished one holds
``checkpoints/``. :class:`RunDir` names those files and reads them with errors that
say what is missing and what to do.

Example:
    >>> run = RunDir.of("runs/no-such-run/model.keras")
    >>> run.labels_file.as_posix(), run.finished()
    ('runs/no-such-run/labels.json', False)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import load_yaml
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_write_json

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
# What a finished run needs to be evaluated, predicted with or exported.
FINISHED_FILES = (MODEL_FILE, LABELS_FILE, CONFIG_FILE)


@dataclass(frozen=True)
class RunDir:
    """A run folder and the files in it.

    Attributes:
        path: Path. The folder.
    """

    path: Path

    @classmethod
    def of(cls, model_or_folder: str | os.PathLike) -> RunDir:
        """The run folder of a ``model.keras`` file, or the folder itself."""
        path = Path(model_or_folder)
        return cls(path if path.is_dir() or not path.suffix else path.parent)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def labels_file(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def finished(self) -> bool:
        """Whether the run wrote everything a finished run holds."""
        return not self.missing(FINISHED_FILES)

    def missing(self, names: Sequence[str] = FINISHED_FILES) -> list[str]:
        return [name for name in names if not (self.path / name).is_file()]

    def check_finished(self, purpose: str) -> None:
        """Raise a one-line error naming the missing files and the remedy.

        Raises:
            ConfigError: a file of :data:`FINISHED_FILES` is missing.
        """
        missing = self.missing()
        if not missing:
            return
        hint = (" It holds checkpoints only: the run did not finish; continue it with "
                "`python -m kerastl.train --output DIR --resume`."
                if (self.path / CHECKPOINTS).is_dir() else "")
        raise ConfigError(
            f"{str(self.path)!r} is not a finished kerastl run: {', '.join(missing)} "
            f"missing.{hint} {purpose} needs the folder `python -m kerastl.train --output "
            "DIR` wrote.")

    def write_labels(self, class_names: Sequence[str], task: str, image_size: int,
                     loss: dict[str, Any] | None = None) -> None:
        """``labels.json``: what a model's outputs mean, for every later reader."""
        labels = {"class_names": list(class_names), "task": task, "image_size": image_size}
        if loss is not None:
            labels["loss"] = loss
        atomic_write_json(self.labels_file, labels)

    def read_labels(self, *, required: bool = True) -> dict[str, Any] | None:
        """``labels.json``, or None when it is absent and not ``required``.

        Raises:
            DataError: ``required`` and there is no ``labels.json``.
        """
        if self.labels_file.is_file():
            return json.loads(self.labels_file.read_text())
        if not required:
            return None
        raise DataError(
            f"No {LABELS_FILE} in {str(self.path)!r}; kerastl writes it with {MODEL_FILE}. "
            "Copy it alongside the model.")

    def read_config(self) -> dict[str, Any]:
        """``config.yaml`` as a dict ({} when the folder has none)."""
        return load_yaml(self.config_file) if self.config_file.is_file() else {}

    def read_facts(self) -> dict[str, Any]:
        """``run.json`` ({} when the folder has none, e.g. an evaluation's)."""
        return json.loads(self.run_file.read_text()) if self.run_file.is_file() else {}

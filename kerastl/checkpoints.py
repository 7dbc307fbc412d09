"""Crash-safe, phase-aware checkpoints.

Keras's ``BackupAndRestore`` writes in place (a kill mid-write leaves a corrupt
backup) and deletes its backup when ``TerminateOnNaN`` stops training. kerastl
writes each checkpoint into a temporary directory and renames it into place, keeps
the previous one, falls back to it when the latest is unreadable, and never deletes
a checkpoint because training failed.

A checkpoint holds the whole model's weights, the optimizer's variables (slots and
iteration count, hence the schedule position) and ``state.json`` (phase index,
epochs completed, history).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np

from . import _backend  # noqa: F401
from .outputs import atomic_directory

KEEP = 2
_PREFIX = "epoch-"
MODEL_WEIGHTS_FILE = "model.weights.h5"
BEST_WEIGHTS_FILE = "best.npz"


@dataclass
class TrainState:
    """Where a run is: enough to resume it exactly at an epoch boundary."""

    phase_index: int = 0
    epoch: int = 0  # epochs completed over the whole run
    phase_epoch: int = 0  # epochs completed in the current phase
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    # Best validated epoch of the run and of the current phase: epoch, phase,
    # val_accuracy, val_loss (their weights are saved with the checkpoint).
    best: dict[str, Any] | None = None
    phase_best: dict[str, Any] | None = None
    # Learning rates found by the range test (lr="auto"), by phase index.
    lrs: dict[str, float] = field(default_factory=dict)


def save_checkpoint(
    directory: str | Path, model: keras.Model, optimizer: Any, state: TrainState,
    *, best: dict[str, list[np.ndarray]] | None = None,
) -> Path:
    """Write ``directory/epoch-NNNN`` atomically and prune all but the last two.

    Args:
        directory: str or Path. The run's ``checkpoints/`` directory.
        model: keras.Model. Its weights and dropout random state are saved.
        optimizer: Keras optimizer or None (a phase boundary: the next phase starts
            with a fresh one).
        state: TrainState. Saved as ``state.json``.
        best: dict of weight lists, optional. E.g. ``{"best": model.get_weights()}``
            of an earlier epoch, saved as ``best.npz``.
    """
    directory = Path(directory)
    final = directory / f"{_PREFIX}{state.epoch:04d}"
    with atomic_directory(final) as tmp:
        model.save_weights(str(tmp / MODEL_WEIGHTS_FILE))
        variables = optimizer.variables if optimizer is not None else []
        with open(tmp / "optimizer.npz", "wb") as handle:
            np.savez(handle, **{f"v{i:04d}": np.asarray(v) for i, v in enumerate(variables)})
        # Dropout's random state is a variable that `save_weights` leaves out; without it
        # a resumed run would draw different masks than an uninterrupted one.
        seeds = {f"s{i:04d}": np.asarray(v) for i, v in enumerate(_seed_states(model))}
        with open(tmp / "rng.npz", "wb") as handle:
            np.savez(handle, **seeds)
        if best:
            with open(tmp / BEST_WEIGHTS_FILE, "wb") as handle:
                np.savez(handle, **{f"{key}/{i:04d}": np.asarray(w)
                                    for key, weights in best.items()
                                    for i, w in enumerate(weights)})
        (tmp / "state.json").write_text(json.dumps(state.__dict__, default=float))
    for old in list_checkpoints(directory)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_best_weights(checkpoint: Path) -> dict[str, list[np.ndarray]]:
    """The best-epoch weight lists saved with a checkpoint (empty if none)."""
    path = Path(checkpoint) / BEST_WEIGHTS_FILE
    if not path.is_file():
        return {}
    saved: dict[str, list[np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as values:
        for name in sorted(values.files):
            key = name.split("/", 1)[0]
            saved.setdefault(key, []).append(values[name])
    return saved


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def read_state(checkpoint: Path) -> TrainState:
    return TrainState(**json.loads((checkpoint / "state.json").read_text()))


def latest_readable_state(directory: str | Path) -> tuple[Path, TrainState] | None:
    """Newest checkpoint whose ``state.json`` parses; older ones are fallbacks."""
    for checkpoint in reversed(list_checkpoints(directory)):
        try:
            _check_readable(checkpoint)
            return checkpoint, read_state(checkpoint)
        except (OSError, ValueError, TypeError, KeyError) as error:
            warnings.warn(
                f"Checkpoint {str(checkpoint)!r} is unreadable ({error}); falling back to the "
                "previous one.",
                stacklevel=2,
            )
    return None


def _check_readable(checkpoint: Path) -> None:
    """Open every file of a checkpoint; a truncated file raises ``OSError``."""
    import h5py

    with h5py.File(checkpoint / MODEL_WEIGHTS_FILE, "r") as handle:
        handle.visit(lambda name: None)
    with np.load(checkpoint / "optimizer.npz", allow_pickle=False) as values:
        for key in values.files:
            values[key]


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def restore_weights(checkpoint: Path, model: keras.Model, optimizer: Any) -> None:
    """Load model (and optimizer) variables; raises ``OSError``/``ValueError`` if corrupt.

    ``optimizer=None`` restores the model only (a phase boundary).
    """
    model.load_weights(str(checkpoint / MODEL_WEIGHTS_FILE))
    if (checkpoint / "rng.npz").is_file():
        with np.load(checkpoint / "rng.npz", allow_pickle=False) as values:
            states = [values[key] for key in sorted(values.files)]
        for variable, value in zip(_seed_states(model), states, strict=True):
            variable.assign(value)
    if optimizer is None:
        return
    with np.load(checkpoint / "optimizer.npz", allow_pickle=False) as values:
        saved = [values[key] for key in sorted(values.files)]
    variables = list(optimizer.variables)
    if len(saved) != len(variables):
        raise ValueError(
            f"optimizer state in {str(checkpoint)!r} has {len(saved)} variables, the "
            f"rebuilt optimizer {len(variables)}"
        )
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)

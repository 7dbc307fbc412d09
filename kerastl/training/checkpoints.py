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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.files import atomic_directory

KEEP = 2
_PREFIX = "epoch-"
MODEL_WEIGHTS_FILE = "model.weights.h5"
BEST_WEIGHTS_FILE = "best.npz"
# best.npz entries: the distinct arrays, and each weight list as indices into them.
_ARRAY = "array/"
_INDEX = "index/"


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
        named = _named_variables(optimizer) if optimizer is not None else []
        values = {f"v{i:04d}": np.asarray(v) for i, (_, v) in enumerate(named)}
        values[_NAMES] = np.array([name for name, _ in named], dtype=str)
        with open(tmp / "optimizer.npz", "wb") as handle:
            np.savez(handle, **values)
        # Dropout's random state is a variable that `save_weights` leaves out; without it
        # a resumed run would draw different masks than an uninterrupted one.
        seeds = {f"s{i:04d}": np.asarray(v) for i, v in enumerate(_seed_states(model))}
        with open(tmp / "rng.npz", "wb") as handle:
            np.savez(handle, **seeds)
        if best:
            with open(tmp / BEST_WEIGHTS_FILE, "wb") as handle:
                np.savez(handle, **_shared_arrays(best))
        (tmp / "state.json").write_text(json.dumps(state.__dict__, default=float))
    for old in list_checkpoints(directory)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _shared_arrays(lists: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Weight lists as ``.npz`` entries, each array object written once.

    The run's and the phase's best are often the same snapshot, and snapshots of one
    phase share the arrays of its frozen layers (a frozen VGG16 base is 59 MB): each
    list is stored as indices into the distinct arrays.
    """
    entries: dict[str, np.ndarray] = {}
    position: dict[int, int] = {}
    for key, weights in lists.items():
        indices = []
        for weight in weights:
            if id(weight) not in position:
                position[id(weight)] = len(position)
                entries[f"{_ARRAY}{position[id(weight)]:05d}"] = np.asarray(weight)
            indices.append(position[id(weight)])
        entries[f"{_INDEX}{key}"] = np.asarray(indices, dtype=np.int64)
    return entries


def read_best_weights(checkpoint: Path) -> dict[str, list[np.ndarray]]:
    """The best-epoch weight lists saved with a checkpoint (empty if none)."""
    path = Path(checkpoint) / BEST_WEIGHTS_FILE
    if not path.is_file():
        return {}
    saved: dict[str, list[np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as values:
        names = sorted(values.files)
        if not any(name.startswith(_INDEX) for name in names):  # the earlier format: key/NNNN
            for name in names:
                saved.setdefault(name.split("/", 1)[0], []).append(values[name])
            return saved
        arrays = {name: values[name] for name in names if name.startswith(_ARRAY)}
        for name in names:
            if name.startswith(_INDEX):
                saved[name[len(_INDEX):]] = [arrays[f"{_ARRAY}{i:05d}"]
                                             for i in values[name].tolist()]
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
    """Newest checkpoint whose every file reads back; older ones are fallbacks."""
    for checkpoint in reversed(list_checkpoints(directory)):
        try:
            _check_readable(checkpoint)
            return checkpoint, read_state(checkpoint)
        # A truncated .npz raises BadZipFile or EOFError, neither an OSError.
        except (OSError, ValueError, TypeError, KeyError, EOFError,
                zipfile.BadZipFile) as error:
            warnings.warn(
                f"Checkpoint {str(checkpoint)!r} is unreadable ({error}); falling back to the "
                "previous one.",
                stacklevel=2,
            )
    return None


def _check_readable(checkpoint: Path) -> None:
    """Read every file of a checkpoint, so a truncated one raises here, not mid-restore."""
    import h5py

    with h5py.File(checkpoint / MODEL_WEIGHTS_FILE, "r") as handle:
        handle.visit(lambda name: None)
    arrays = ["optimizer.npz"]
    if (checkpoint / "rng.npz").exists():  # older checkpoints have none
        arrays.append("rng.npz")
    for name in arrays:
        _read_npz(checkpoint / name)
    read_state(checkpoint)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (our own handle: NumPy leaks it on a bad zip)."""
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as values:
        return {key: values[key] for key in values.files}


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def restore_weights(checkpoint: Path, model: keras.Model, optimizer: Any) -> None:
    """Load model (and optimizer) variables; raises ``OSError``/``ValueError`` if corrupt.

    ``optimizer=None`` restores the model only (a phase boundary). Optimizer
    variables are matched by name, so a run resumed with another ``--precision``
    keeps its slots and step count: the loss-scale state of a ``mixed_float16``
    checkpoint is left out of a float32 optimizer, and a ``mixed_float16`` run
    resumed from a float32 checkpoint starts a fresh loss scale (each with a warning).
    """
    model.load_weights(str(checkpoint / MODEL_WEIGHTS_FILE))
    if (checkpoint / "rng.npz").is_file():
        seeds = _read_npz(checkpoint / "rng.npz")
        states = [seeds[key] for key in sorted(seeds)]
        for variable, value in zip(_seed_states(model), states, strict=True):
            variable.assign(value)
    if optimizer is not None:
        restore_optimizer(checkpoint, optimizer)


def restore_optimizer(checkpoint: Path, optimizer: Any) -> None:
    """Load a checkpoint's optimizer variables, matched by name as in :func:`restore_weights`."""
    saved = _read_npz(checkpoint / "optimizer.npz")
    names = saved.pop(_NAMES, None)
    values = [saved[key] for key in sorted(saved)]
    current = _named_variables(optimizer)
    if names is None or not _unique(names.tolist()) or not _unique([n for n, _ in current]):
        _restore_by_position(checkpoint, [v for _, v in current], values)
    else:
        _restore_by_name(checkpoint, current, dict(zip(names.tolist(), values, strict=True)))


# Loss scaling (mixed_float16) is the one part of the optimizer state that may come
# or go between a run and its resumption (--precision); everything else must match.
_LOSS_SCALE = "loss_scale/"
_NAMES = "names"


def _named_variables(optimizer: Any) -> list[tuple[str, Any]]:
    """Optimizer variables under names that do not depend on the optimizer's number.

    Keras paths start with the optimizer's per-process name (``sgd_1/...``), and a
    ``LossScaleOptimizer`` lists its own variables before its inner optimizer's; the
    variable names (``iteration``, ``<model variable>_momentum``) are stable.
    """
    named = []
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        inner = {id(v) for v in optimizer.inner_optimizer.variables}
        named += [(_LOSS_SCALE + v.name, v) for v in optimizer.variables if id(v) not in inner]
        optimizer = optimizer.inner_optimizer
    return named + [(f"optimizer/{v.name}", v) for v in optimizer.variables]


def _unique(names: list[str]) -> bool:
    return len(set(names)) == len(names)


def _restore_by_position(checkpoint: Path, variables: list, values: list) -> None:
    """Checkpoints written before names were saved: same optimizer, same order."""
    if len(values) != len(variables):
        raise ValueError(
            f"optimizer state in {str(checkpoint)!r} has {len(values)} variables, the "
            f"rebuilt optimizer {len(variables)}"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _restore_by_name(checkpoint: Path, current: list[tuple[str, Any]], saved: dict) -> None:
    rebuilt_only = [name for name, _ in current if name not in saved]
    saved_only = [name for name in saved if name not in dict(current)]
    mismatched = [n for n in rebuilt_only + saved_only if not n.startswith(_LOSS_SCALE)]
    mismatched += [name for name, v in current
                   if name in saved and tuple(saved[name].shape) != tuple(v.shape)]
    if mismatched:
        raise ValueError(
            f"optimizer state in {str(checkpoint)!r} does not match the rebuilt optimizer: "
            f"{mismatched[:5]} differ (saved only: {saved_only[:3]}, rebuilt only: "
            f"{rebuilt_only[:3]}). Resume with the --optimizer and model of the saved run."
        )
    for name, variable in current:
        if name in saved:
            variable.assign(saved[name])
    if saved_only:
        warnings.warn(
            f"Checkpoint {str(checkpoint)!r} was written with loss scaling "
            "(mixed_float16); its loss-scale state is not restored, since this run does "
            "not scale the loss. Optimizer slots and step count are restored.",
            stacklevel=3,
        )
    if rebuilt_only:
        warnings.warn(
            f"Checkpoint {str(checkpoint)!r} was written without loss scaling; this "
            "mixed_float16 run starts with a fresh loss scale. Optimizer slots and step "
            "count are restored.",
            stacklevel=3,
        )

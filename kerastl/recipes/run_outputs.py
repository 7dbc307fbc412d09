"""What a finished run writes: metrics, curves, the network check, run.json, next commands."""

from __future__ import annotations

import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402

from ..config.schema import RunConfig
from ..core import backend as _backend  # noqa: F401
from ..core.console import epoch_in_phase
from ..core.files import (
    atomic_file,
    atomic_write_json,
    atomic_write_text,
)
from ..core.version import __version__
from ..data.splits import DataSplits
from ..models.forward import predict
from ..models.freezing import count_params
from ..models.weights import RUN_WEIGHTS_FILE, has_pretrained_weights, save_base_weights
from ..outputs.health import chance_accuracy, check_network
from ..outputs.history import plot_curves, write_history_csv
from ..outputs.report_page import write_run_report
from ..outputs.reports import write_evaluation
from ..outputs.run_dir import RunDir
from ..outputs.summary import summary_text
from ..training.checkpoints import TrainState
from ..training.losses import class_weights_for, correct_count, evaluation_losses
from .pixel_blend import LOGITS


def write_epoch_outputs(out: Path, state: TrainState, writer) -> None:
    write_history_csv(state.history, out / "history.csv")
    row = state.history[-1]
    with writer.as_default(step=row["epoch"]):
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                tf.summary.scalar(key, value)
    writer.flush()


def train_time_parts(data_seconds: list[float], epochs: list[dict]) -> dict[str, float]:
    """Where the training time went: what ``run.json`` breaks ``train`` into.

    ``phase_data`` builds what each phase trains on (a cached phase's feature
    extraction); ``first_epochs`` are each phase's first epoch, which traces the
    step; ``epochs`` the rest.
    """
    first, later, seen = 0.0, 0.0, set()
    for row in epochs:
        if row["phase"] in seen:
            later += row.get("seconds", 0.0)
        else:
            seen.add(row["phase"])
            first += row.get("seconds", 0.0)
    return {"phase_data": sum(data_seconds), "first_epochs": first, "epochs": later}


def cached_evaluation(config: RunConfig, splits, state: TrainState, served: list):
    """``(head, cached validation features)`` when they give the final model's output.

    A run evaluated on its validation split that ended on a frozen phase trained on
    cached features has the base features of those images already: the head on them
    is what the full model computes, without a second pass of the base (measured:
    most of the "evaluate" time of a cached frozen run, issue 11).
    """
    last = served[-1] if served else None
    if (splits.test is not None or last is None or last.arrays is None or last.val is None
            or config.prune is not None):
        return None
    final_phase = config.phases[-1].name
    if config.keep == "best" and state.best is not None and state.best["phase"] != final_phase:
        return None  # restored weights of an earlier phase, whose base may differ
    return last.model, last.val


def write_final_outputs(out, config, runtime, model, splits, state, notes, clock, log,
                   cached=None, blend=None, network=None, probe_accuracy=None) -> dict:
    evaluation, which = evaluation_split(splits)
    parts = None
    if cached is not None:
        probs, labels = predict(*cached, label="Evaluating")
    elif network is not None:  # blended: the network's and the pixels' own outputs too
        probs, labels, parts = _blend_parts(model, evaluation.batches(
            config.image_size, runtime.global_batch))
    else:
        probs, labels = predict(model, evaluation.batches(config.image_size,
                                                          runtime.global_batch),
                                label="Evaluating")
    # The definition of val_loss: label smoothing and class weights as in training.
    loss_settings = {"label_smoothing": config.label_smoothing,
                     "class_weights": class_weights_for(config.class_weight, config.task,
                                                        splits.train.labels,
                                                        len(splits.class_names))}
    losses = evaluation_losses(config.task, labels, probs, **loss_settings)
    loss = losses.pop("loss")
    metrics = write_evaluation(out, labels, probs, splits.class_names, task=config.task,
                               loss=loss, extra=losses)
    metrics["evaluated_on"] = which
    check = _network_check(config, metrics, labels, parts, probe_accuracy, which,
                           network_probs=probs)
    if parts is not None:
        metrics["network_accuracy"] = check["network_accuracy"]
        metrics["pixel_accuracy"] = check["pixel_accuracy"]
    atomic_write_json(out / "metrics.json", metrics)
    clock.lap("evaluate")
    write_history_csv(state.history, out / "history.csv")
    plot_curves(state.history, out / "curves.png")
    with atomic_file(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    save_base_weights(model.get_layer("backbone"), out / RUN_WEIGHTS_FILE)
    RunDir(out).write_labels(splits.class_names, config.task, config.image_size,
                             loss=loss_settings)
    skipped = splits.skipped()
    if skipped:
        atomic_write_text(out / "skipped_files.txt", "".join(
            f"{path}\t{reason}\n" for path, reason in skipped.items()))
    clock.lap("save_outputs")
    seconds = clock.total()
    facts = _run_facts(config, runtime, model, state, notes, clock, splits, blend)
    facts["network_check"] = check
    atomic_write_json(RunDir(out).run_file, facts)
    best = state.best or {}
    for note in _probe_notes(config, state):
        notes.append(note)
        log(f"Note: {note}")
    if check["status"] != "ok":
        log(f"Warning: {check['message']}. Fix: {check['fix']}.")
    log("\n" + summary_text({
        "backbone": config.backbone,
        "phases": [{"name": p.name, "epochs": p.epochs, "fit": p.fit} for p in config.phases],
        "epochs": sum(1 for row in state.history if row.get("phase") not in _probe_names(config)),
        "examples": {"train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test or [])},
        "best_val_accuracy": best.get("val_accuracy"),
        "best_epoch": epoch_in_phase(state.history, best.get("epoch")),
        "test_accuracy": metrics.get("accuracy"), "evaluated_on": which,
        "blended": parts is not None, "network_check": check,
        "test_loss": loss, "test_cross_entropy": losses.get("cross_entropy"),
        "label_smoothing": config.label_smoothing,
        "seconds": seconds, "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights), "output_dir": str(out),
    }))

    write_run_report(out, model, evaluation, probs, class_names=splits.class_names,
                     task=config.task, log=log)
    log(next_commands(out, config.test_data))
    return metrics


def _blend_parts(model, batches):
    """One pass: the blended output, and the network's and the pixel model's logits.

    Both parts are read from the blended model itself (``network_logits``,
    ``pixel_logits``), so no second copy of the network runs.
    """
    parts = [model.get_layer(f"{part}_{LOGITS}").output for part in ("network", "pixel")]
    both = keras.Model(model.inputs[0], keras.layers.Concatenate(dtype="float32")(
        [model.outputs[0], *parts]))
    joined, labels = predict(both, batches, label="Evaluating")
    probs, *logits = np.split(joined, 3, axis=1)
    # A sigmoid of logits has the arg-max and the 0.5 threshold of the part's own
    # activation: enough for accuracy.
    from scipy.special import expit  # no overflow warning on large logits

    return probs, labels, tuple(expit(part) for part in logits)


def _network_check(config, metrics, labels, parts, probe_accuracy, which,
                   network_probs=None) -> dict:
    """``run.json``'s ``network_check``: the network alone against chance, probe, pixels."""
    def accuracy(probs) -> float:
        hits, total = correct_count(config.task, labels, probs)
        return float(hits) / max(float(total), 1.0)

    network, pixels = (metrics["accuracy"], None) if parts is None else map(accuracy, parts)
    if parts is not None:
        network_probs = parts[0]
    balanced, classes = None, 0
    if config.task != "multilabel" and network_probs is not None:
        from sklearn.metrics import balanced_accuracy_score

        probs = np.asarray(network_probs)
        predicted = (np.argmax(probs, axis=1) if probs.shape[1] > 1
                     else (probs[:, 0] >= 0.5).astype(np.int64))
        classes = max(2, probs.shape[1])
        with warnings.catch_warnings():  # a class absent from the labels: still a score
            warnings.simplefilter("ignore")
            balanced = float(balanced_accuracy_score(
                np.asarray(labels).reshape(-1).astype(np.int64), predicted))
    return check_network(
        network_accuracy=network, chance=chance_accuracy(config.task, labels),
        examples=len(labels), probe_accuracy=probe_accuracy, pixel_accuracy=pixels,
        held_out=which in ("test", "validation"),
        pretrained=has_pretrained_weights(config.weights),
        phase_modes=[(p.mode, p.bn_policy) for p in config.phases if p.fit == "train"],
        balanced_accuracy=balanced, classes=classes)


def probe_accuracy_of(state: TrainState, probe_facts: dict) -> float | None:
    """The run's linear probe: on validation, else cross-validated on training images."""
    rows = [row for row in state.history if row.get("phase") == "probe"]
    if len(rows) == len(state.history):  # the probe is the model: nothing to compare
        return None
    if rows and "val_accuracy" in rows[-1]:
        return float(rows[-1]["val_accuracy"])
    return probe_facts.get("cv_accuracy")


def _probe_names(config: RunConfig) -> set[str]:
    return {p.name for p in config.phases if p.fit == "probe"}


def next_commands(out: Path, test_data: str | None) -> str:
    """The closing lines: where the outputs are and the commands that use them.

    Example:
        >>> print(next_commands(Path("runs/train3"), "flowers/test"))
        Outputs written to runs/train3
        Next:
          python -m kerastl.evaluate runs/train3 flowers/test --output runs/train3/evaluation
          python -m kerastl.predict runs/train3 IMAGE_OR_FOLDER --output predictions.csv
    """
    run, data = _shell_path(out), _shell_path(test_data) if test_data else "TEST_FOLDER"
    return "\n".join([
        f"Outputs written to {run}", "Next:",
        f"  python -m kerastl.evaluate {run} {data} --output {_shell_path(out / 'evaluation')}",
        f"  python -m kerastl.predict {run} IMAGE_OR_FOLDER --output predictions.csv"])


def _shell_path(path) -> str:
    import shlex

    return shlex.quote(str(path))


def evaluation_split(splits: DataSplits) -> tuple[Any, str]:
    """What ``metrics.json`` reports on: the test split, else validation, else training.

    Training accuracy says little about new images; the name says so in the report.
    """
    if splits.test is not None:
        return splits.test, "test"
    if splits.val is not None:
        return splits.val, "validation"
    return splits.train, "training (no held-out data: not an estimate for new images)"


def _probe_notes(config: RunConfig, state: TrainState) -> list[str]:
    """How the run compares with its own linear probe, on validation."""
    probes = [r for r in state.history if r.get("phase") == "probe" and "val_accuracy" in r]
    if not probes or not state.history:
        return []
    probe = probes[-1]["val_accuracy"]
    final = (state.best or {}).get("val_accuracy") if config.keep == "best" else \
        state.history[-1].get("val_accuracy")
    if final is None:
        return []
    kept = (state.best or {}).get("phase") if config.keep == "best" else "last epoch"
    if final < probe:
        return [f"this run ends below its own linear probe on validation ({final:.4f} < "
                f"{probe:.4f}); --keep best would have kept the probe"]
    return [f"linear probe val_accuracy {probe:.4f}; the run keeps {kept!r} at {final:.4f}"]


def _run_facts(config, runtime, model, state, notes, clock, splits, blend=None) -> dict:
    return {
        "versions": {
            "kerastl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "runtime": runtime.describe(),
        "seconds": round(clock.total(), 2),
        "seconds_breakdown": clock.breakdown(),
        "train_breakdown": clock.parts.get("train"),
        "epochs": state.epoch,
        "examples": {"train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test or [])},
        "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights),
        "best_epoch": state.best,
        "pixel_blend": blend,
        "found_learning_rates": state.lrs,
        # As printed; an evaluation of this run's model shows it in its report.
        "unfreeze_plan": None if getattr(model, "plan", None) is None else str(model.plan),
        "notes": notes,
    }

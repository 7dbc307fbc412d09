"""The run summary: the few lines a person reads first, from run.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError


def summary_text(run: Mapping[str, Any]) -> str:
    """One screen describing a finished run; keys missing from ``run`` are skipped.

    Recognised keys: ``backbone``; ``mode``; ``phases`` (list of ``{"name", "epochs",
    "fit"}`` dicts or names; a probe shows no epochs); ``epochs`` (trained, probes
    left out); ``examples`` (``{"train": n, "val": n, "test": n}``);
    ``best_val_accuracy`` and ``best_epoch``; ``test_accuracy``; ``blended`` (the
    accuracy is of the network plus the pixel blend) and ``network_check`` (from
    :func:`kerastl.outputs.health.check_network`: the network alone, always shown beside a
    blended accuracy); ``test_loss`` (the training objective) with ``label_smoothing``
    and ``test_cross_entropy``;
    ``evaluated_on`` (``"test"`` or ``"validation"``: which split gave the test numbers);
    ``seconds`` (wall time); ``trainable_params`` and ``total_params``;
    ``output_dir``; ``outputs`` (name -> path).

    Args:
        run: mapping. What the trainer recorded about the run.

    Returns:
        Aligned ``label  value`` lines, ready to print.

    Example:
        >>> print(summary_text({"backbone": "MobileNetV2", "test_accuracy": 0.9125}))
        kerastl run summary
          backbone        MobileNetV2
          test accuracy   91.25%
    """
    if not isinstance(run, Mapping):
        raise ConfigError(f"run must be a dict of run facts; received {type(run).__name__}.")
    lines = [(label, value) for label, value in _summary_fields(run) if value is not None]
    width = max((len(label) for label, _ in lines), default=0) + 2
    body = [f"  {label.ljust(width)} {value}" for label, value in lines]
    return "\n".join(["kerastl run summary", *body])


def _summary_fields(run: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    fields = [
        ("backbone", _opt(run.get("backbone"))),
        ("mode", _mode(run)),
        ("epochs", _opt(run.get("epochs"))),
        ("examples", _examples(run.get("examples"))),
        ("best val accuracy", _best(run)),
        ("test accuracy", _evaluated(run, _accuracy(run))),
        ("network alone", _network_alone(run)),
        (_loss_label(run), None if run.get("test_loss") is None else f"{run['test_loss']:.4f}"),
        ("cross-entropy", None if run.get("test_cross_entropy") is None
         else f"{run['test_cross_entropy']:.4f}"),
        ("time", None if run.get("seconds") is None else _duration(float(run["seconds"]))),
        ("trainable params", _params(run)),
        ("outputs", _opt(run.get("output_dir"))),
    ]
    for name, location in (run.get("outputs") or {}).items():
        fields.append((f"  {name}", str(location)))
    return fields


def _accuracy(run: Mapping[str, Any]) -> str | None:
    value = _percent(run.get("test_accuracy"))
    return f"{value} (network + pixel blend)" if value and run.get("blended") else value


def _network_alone(run: Mapping[str, Any]) -> str | None:
    # Never a blended number without the network's own beside it (issue 27).
    check = run.get("network_check") or {}
    if not run.get("blended") and check.get("status") in (None, "ok"):
        return None
    value = _percent(check.get("network_accuracy"))
    if value is None:
        return None
    if check.get("status") == "at_chance":
        return f"{value} AT CHANCE ({_percent(check.get('chance'))}): it did not learn"
    return value if check.get("status") == "ok" else f"{value} ({check['status']})"


def _loss_label(run: Mapping[str, Any]) -> str:
    smoothing = run.get("label_smoothing")
    return f"loss (smoothing {smoothing:g})" if smoothing else "loss"


def _evaluated(run: Mapping[str, Any], value: str | None) -> str | None:
    # Without a test split the "test" numbers come from validation; say so.
    where = run.get("evaluated_on")
    return value if value is None or where in (None, "test") else f"{value} (on {where} split)"


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _mode(run: Mapping[str, Any]) -> str | None:
    text = " -> ".join(_phase_text(phase) for phase in run.get("phases") or ())
    if run.get("mode") is None:
        return text or None
    return f"{run['mode']} ({text})" if text else str(run["mode"])


def _phase_text(phase: Mapping[str, Any] | str) -> str:
    if not isinstance(phase, Mapping):
        return str(phase)
    if phase.get("fit") == "probe" or "epochs" not in phase:
        return str(phase["name"])  # a probe is fitted once, not trained for epochs
    return f"{phase['name']} {phase['epochs']} ep"


def _examples(examples: Mapping[str, int] | None) -> str | None:
    if not examples:
        return None
    return ", ".join(f"{split} {count:,}" for split, count in examples.items())


def _best(run: Mapping[str, Any]) -> str | None:
    best = _percent(run.get("best_val_accuracy"))
    if best is None or run.get("best_epoch") is None:
        return best
    where = run["best_epoch"]
    return f"{best} ({where if isinstance(where, str) else f'epoch {where}'})"


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * float(value):.2f}%"


def _params(run: Mapping[str, Any]) -> str | None:
    trainable, total = run.get("trainable_params"), run.get("total_params")
    if trainable is None:
        return None
    return f"{int(trainable):,}" + ("" if total is None else f" of {int(total):,}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"

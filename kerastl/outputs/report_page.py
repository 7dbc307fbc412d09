"""``report.html``: one self-contained page that holds a whole run or evaluation.

The page is built from the files kerastl already wrote in the output folder
(``config.yaml``, ``run.json``, ``metrics.json``, ``interpretation.json``, the PNG
figures), so it says exactly what those files say. Every image is inline as a
``data:`` URI and there is no script, stylesheet or font from anywhere else: the page
reads offline, opens from an e-mail attachment, and makes no request to any host
(the empty ``data:`` icon keeps browsers from asking for ``/favicon.ico``).

Example:
    >>> import tempfile
    >>> from kerastl.outputs.reports import write_evaluation
    >>> out = tempfile.mkdtemp()
    >>> _ = write_evaluation(out, [0, 1], [[0.9, 0.1], [0.2, 0.8]], ["cat", "dog"])
    >>> page = write_report(out)
    >>> page.name, "data:image/png;base64," in page.read_text()
    ('report.html', True)
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import KerastlError
from ..core.files import atomic_write_text
from ..core.version import __version__
from .interpretation import Interpretation, display_names
from .interpretation_files import write_interpretation

REPORT_FILE = "report.html"
# Figures the page shows, in order, when the folder has them.
FIGURES = (("curves.png", "Curves (dotted lines: phase starts)"),
           ("confusion_matrix.png", "Confusion matrix"),
           ("top_losses.png", "Top losses (Grad-CAM over each image)"))

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;font-size:.92em}th{background:#f4f4f4}td.n{text-align:right;
font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
img{max-width:100%;height:auto;border:1px solid #eee}.muted{color:#777}
"""


def write_report(out: str | os.PathLike, *, plan: str | None = None,
                 title: str | None = None, model_run: str | os.PathLike | None = None) -> Path:
    """Write ``out/report.html`` from the files in ``out``; sections without files are left out.

    Args:
        out: the output folder of a training run or an evaluation.
        plan: str, optional. The unfreeze plan as printed (``str(model.plan)``).
            Defaults to the one ``run.json`` recorded.
        title: str, optional. The page's heading. Defaults to the folder's name.
        model_run: folder, optional. For an evaluation: the folder that holds the
            evaluated ``model.keras``. When it is a kerastl run (``run.json``), the
            page shows that run's unfreeze plan, what ``auto`` chose and its
            configuration; otherwise it says the model comes from no run.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out)
    run = _json(out / "run.json")
    metrics = _json(out / "metrics.json")
    interpretation = _json(out / "interpretation.json")
    kind = "Training run" if run else "Evaluation"
    parts = [f"<h1>{_e(title or f'{kind}: {out.resolve().name}')}</h1>",
             f"<p class='muted'>{_e(kind)} written "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} in "
             f"<code>{_e(str(out.resolve()))}</code></p>"]
    parts += _summary(metrics, run)
    source = out if run else None
    if not run and model_run is not None:
        source = Path(model_run)
        run = _json(source / "run.json")
        if run:
            parts += ["<h2>The run that trained this model</h2>",
                      f"<p><code>{_e(str(source.resolve()))}</code>: its unfreeze plan, "
                      "choices and configuration below come from its run.json and "
                      "config.yaml.</p>"]
        else:
            parts += ["<h2>The run that trained this model</h2>",
                      "<p>None: a plain Keras model (no kerastl run.json beside "
                      f"<code>{_e(str(source.resolve()))}</code>), so there is no unfreeze "
                      "plan, configuration or training choice to show.</p>"]
            source = None
    parts += _auto_choices(run, interpretation)
    if source is not None and (source / "config.yaml").is_file():
        parts += ["<h2>Configuration</h2>", "<details><summary>config.yaml (rerun with "
                  "<code>python -m kerastl.train --config</code>)</summary>"
                  f"<pre>{_e((source / 'config.yaml').read_text())}</pre></details>"]
    plan = plan or run.get("unfreeze_plan") or _phases_of(source)
    if plan:
        parts += ["<h2>Unfreeze plan</h2>", f"<pre>{_e(plan)}</pre>"]
    for name, caption in FIGURES:
        if (out / name).is_file():
            parts += [f"<h2>{_e(caption)}</h2>", _image(out / name, caption)]
            if name == "confusion_matrix.png":
                parts += _per_class(metrics)
            if name == "top_losses.png":
                parts += _top_losses(interpretation)
    if interpretation:
        parts += _most_confused(interpretation)
    parts += _timings_and_versions(run if source == out else {}, interpretation)
    body = "\n".join(parts)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{_e(title or f'kerastl report: {out.resolve().name}')}</title>"
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
    return atomic_write_text(out / REPORT_FILE, page)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<p><img alt='{_e(alt)}' src='data:image/png;base64,{data}'></p>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='n'>{_number(v)}</td>" if isinstance(v, (int, float))
            and not isinstance(v, bool) else f"<td>{_e(v)}</td>" for v in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _summary(metrics: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return []
    rows = [(key, metrics[key]) for key in ("accuracy", "loss", "cross_entropy", "n_examples")
            if key in metrics]
    rows += [("evaluated on", metrics["evaluated_on"])] if "evaluated_on" in metrics else []
    if run:
        rows += [(key.replace("_", " "), run[key]) for key in
                 ("epochs", "trainable_params", "total_params", "seconds") if key in run]
        best = run.get("best_epoch") or {}
        if "val_accuracy" in best:
            rows.append(("best val_accuracy", f"{best['val_accuracy']:.4f} (epoch "
                         f"{best.get('epoch')}, {best.get('phase')})"))
    return ["<h2>Summary</h2>", _table(("", "value"), rows)]


def _auto_choices(run: Mapping[str, Any], interpretation: Mapping[str, Any]) -> list[str]:
    """What ``auto`` chose and why: the run's notes, the pixel blend, found learning rates."""
    notes = list(run.get("notes") or []) + list(interpretation.get("notes") or [])
    blend, lrs = run.get("pixel_blend"), run.get("found_learning_rates")
    if not (notes or blend or lrs):
        return []
    parts = ["<h2>What kerastl chose, and why</h2>"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>")
    if blend:
        shown = {k: v for k, v in blend.items() if not isinstance(v, (dict, list))}
        parts += ["<p>Pixel blend (network logits + weight x a logistic regression on the "
                  "pixels):</p>", _table(("", "value"), sorted(shown.items()))]
    if lrs:
        parts += ["<p>Learning rates found by the range test:</p>",
                  _table(("phase", "learning rate"), sorted(
                      (str(k), v) for k, v in (lrs.items() if isinstance(lrs, dict)
                                               else enumerate(lrs))))]
    return parts


def _per_class(metrics: Mapping[str, Any]) -> list[str]:
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return []
    rows = [(name, s["precision"], s["recall"], s["f1"], s["support"])
            for name, s in per_class.items()]
    return ["<h2>Per-class metrics</h2>",
            _table(("class", "precision", "recall", "f1", "support"), rows)]


def _top_losses(interpretation: Mapping[str, Any]) -> list[str]:
    rows = [(r["file"], r["label"], r["predicted"], r["loss"])
            for r in interpretation.get("top_losses", [])]
    gradcam = interpretation.get("gradcam") or {}
    said = (f"Grad-CAM of the predicted class from layer {gradcam['layer']!r} (feature map "
            f"{'x'.join(map(str, gradcam['feature_map']))}); it explains "
            f"{gradcam['explains']}." if "layer" in gradcam else
            f"No Grad-CAM: {gradcam['none']}" if "none" in gradcam else "")
    return ([f"<p>{_e(said)}</p>"] if said else []) + (
        [_table(("file", "label", "predicted", "loss"), rows)] if rows else [])


def _most_confused(interpretation: Mapping[str, Any]) -> list[str]:
    pairs = interpretation.get("most_confused") or []
    if not pairs:
        return ["<h2>Most-confused pairs</h2>", "<p>No image was mistaken for another class.</p>"]
    return ["<h2>Most-confused pairs</h2>", _table(
        ("label", "predicted as", "images"),
        [(p["label"], p["predicted"], p["count"]) for p in pairs])]


def _phases_of(run_folder: Path | None) -> str | None:
    """A run's mode and phases from its config.yaml (runs whose run.json has no plan)."""
    if run_folder is None or not (run_folder / "config.yaml").is_file():
        return None
    import yaml

    config = yaml.safe_load((run_folder / "config.yaml").read_text()) or {}
    shown = {key: config[key] for key in ("mode", "unfreeze_top", "unfreeze_blocks",
                                          "bn_policy", "phases") if key in config}
    return ("This run's run.json has no unfreeze plan (written before kerastl recorded "
            "it); its config.yaml says:\n" + yaml.safe_dump(shown, sort_keys=False))


def _timings_and_versions(run: Mapping[str, Any],
                          interpretation: Mapping[str, Any]) -> list[str]:
    """A run's time per stage (``run.json``) and the interpretation's own passes."""
    parts = []
    timings = [(k, v) for k, v in (run.get("seconds_breakdown") or {}).items()
               if isinstance(v, (int, float))]
    timings += list((interpretation.get("seconds") or {}).items())
    if timings:
        parts += ["<h2>Timings (seconds)</h2>", _table(("step", "seconds"), timings)]
    versions = run.get("versions") or _versions()
    parts += ["<h2>Versions</h2>", _table(("", "version"), sorted(versions.items()))]
    return parts


def _versions() -> dict[str, str]:
    import keras
    import numpy as np
    import tensorflow as tf


    return {"kerastl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0],
            "platform": platform.platform()}


def write_run_report(out: str | os.PathLike, model, data, probabilities, *,
                     class_names: Sequence[str], task: str, log=print) -> Path | None:
    """A training run's interpretation files and ``report.html``, from its final predictions.

    Uses the predictions the run already made on its evaluation split (no second
    pass); Grad-CAM runs for the top losses only. What cannot be interpreted (a
    model without a spatial map: a note) never fails the run.
    """
    try:
        interp = Interpretation(model, data, list(class_names), task, probabilities,
                                display_names(data))
        write_interpretation(out, interp)
        for note in interp.notes:
            # The CLI remedy of a missing spatial map is an evaluate flag, not a train one.
            note = note.split(" Use larger images")[0]
            log(f"Note: report.html: {note} (python -m kerastl.evaluate ... --gradcam-layer "
                "NAME uses an earlier layer)" if "Grad-CAM" in note else f"Note: {note}")
    except KerastlError as error:
        log(f"Note: no interpretation: {error}")
    except Exception as error:  # noqa: BLE001  (a finished run's outputs are all written)
        log(f"Note: no interpretation ({type(error).__name__}): {error}")
    plan = getattr(model, "plan", None)
    return write_report(out, plan=None if plan is None else str(plan))

"""What an interpretation writes: predictions.csv, interpretation.json, top_losses.png,
gradcam.npz."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import backend as _backend  # noqa: F401
from ..core.errors import ConfigError
from ..core.files import atomic_write, atomic_write_json, atomic_write_text, save_figure
from .interpretation import GRADCAM_CHOICES, TOP_LOSSES, Interpretation


def write_interpretation(out: str | os.PathLike, interp: Interpretation, *,
                         top_losses: int = TOP_LOSSES, gradcam: str = "top",
                         gradcam_layer: str | None = None) -> dict:
    """Write ``predictions.csv``, ``interpretation.json``, ``top_losses.png``, ``gradcam.npz``.

    Args:
        out: folder (created if missing).
        interp: Interpretation. Labelled images (unlabelled: only predictions.csv).
        top_losses: int. Images in the top losses. Defaults to 16.
        gradcam: str. ``"top"`` (the top losses), ``"all"`` (every image) or
            ``"none"``. A model with no spatial map gets a note instead.
        gradcam_layer: str, optional. Layer of the feature map.

    Returns:
        The dict written to ``interpretation.json`` (plus, in ``gradcam``, which
        layer, whose logits, or why none).
    """
    if gradcam not in GRADCAM_CHOICES:
        raise ConfigError(f"gradcam must be one of {GRADCAM_CHOICES}; received {gradcam!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.csv", interp.to_csv())
    if not interp.labelled:
        return {}
    summary = interp.summary(top_losses)
    top = interp.top_loss_indices(top_losses)
    heatmaps, chosen = None, None
    if gradcam != "none":
        chosen = np.arange(len(interp.files)) if gradcam == "all" else top
        try:
            cam = interp.cam(gradcam_layer)
            heatmaps = interp.gradcam(chosen, layer=gradcam_layer)
            summary["gradcam"] = {"layer": cam.layer, "feature_map": list(cam.map_shape),
                                  "explains": cam.explains, "class": "predicted",
                                  "images": gradcam}
        except ConfigError as error:
            summary["gradcam"] = {"none": str(error)}
            interp.notes.append(f"no Grad-CAM: {error}")
            summary["notes"] = list(interp.notes)
    if heatmaps is not None:
        files = np.asarray([interp.files[i] for i in chosen])
        atomic_write(out / "gradcam.npz",
                     lambda f: np.savez_compressed(f, files=files, heatmaps=heatmaps))
    top_maps = None
    if heatmaps is not None:
        top_maps = heatmaps[:len(top)] if gradcam == "top" else heatmaps[top]
    figure = interp.plot_top_losses(top_losses, gradcam=top_maps is not None,
                                    heatmaps=top_maps)
    save_figure(figure, out / "top_losses.png")
    # Again, now with the Grad-CAM pass.
    summary["seconds"] = {name: round(value, 3) for name, value in interp.seconds.items()}
    atomic_write_json(out / "interpretation.json", summary)
    return summary

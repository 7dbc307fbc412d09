"""``kerastl evaluate``: metrics, predictions and what the model gets wrong, on labelled
images."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..outputs.inference import evaluate_folder
from ..outputs.interpretation import GRADCAM_CHOICES, TOP_LOSSES
from .flags import (
    Parser,
    int_flag,
    positive_int_flag,
    quiet_tensorflow,
    run_guarded,
)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.evaluate MODEL DIR``: metrics of a saved model on a folder."""
    quiet_tensorflow(argv)
    parser = Parser(prog="python -m kerastl.evaluate",
                                     description="Evaluate a saved kerastl model on a folder.")
    parser.add_argument("model", help="a kerastl run folder, or its model.keras")
    parser.add_argument("data", help="folder of class subfolders (same classes)")
    parser.add_argument("--output", metavar="DIR", help="write metrics.json, predictions.csv, "
                        "interpretation.json, top_losses.png, gradcam.npz and report.html here")
    parser.add_argument("--batch-size", type=positive_int_flag, default=64)
    _add_interpretation_flags(parser)
    args = parser.parse_args(argv)

    def action() -> int:
        metrics = evaluate_folder(args.model, args.data, output=args.output,
                                  batch_size=args.batch_size, top_losses=args.top_losses,
                                  gradcam=args.gradcam, gradcam_layer=args.gradcam_layer)
        print(evaluation_line(metrics))
        if args.output is not None:
            print(f"Predictions, top losses and report.html written to {args.output}")
        return 0

    return run_guarded(action)


def _add_interpretation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("interpretation")
    group.add_argument("--top-losses", type=int_flag, default=TOP_LOSSES, metavar="K",
                       help=f"images in interpretation.json's top losses ({TOP_LOSSES})")
    group.add_argument("--gradcam", choices=GRADCAM_CHOICES, default=GRADCAM_CHOICES[0],
                       help="Grad-CAM heatmaps in gradcam.npz: of the top losses, of every "
                       f"image, or none ({GRADCAM_CHOICES[0]})")
    group.add_argument("--gradcam-layer", metavar="NAME",
                       help="layer of the feature map Grad-CAM weighs (default: the "
                       "backbone's output, its last spatial map)")


def evaluation_line(metrics: dict) -> str:
    """``evaluate``'s line: accuracy, plain cross-entropy, and the loss named for what it is.

    Example:
        >>> evaluation_line({"accuracy": 0.9, "cross_entropy": 0.31, "loss": 0.52,
        ...                  "n_examples": 120, "definitions": {"loss": "mean categorical "
        ...                  "cross-entropy with label_smoothing=0.1: the training objective"}})
        'accuracy 0.9000  cross-entropy 0.3100  loss 0.5200 (label_smoothing=0.1)  (120 images)'
    """
    import re

    definition = (metrics.get("definitions") or {}).get("loss", "")
    smoothing = re.search(r"label_smoothing=([\d.e-]+)", definition)
    named = f" (label_smoothing={smoothing.group(1)})" if smoothing and \
        float(smoothing.group(1)) > 0 else ""
    entropy = (f"  cross-entropy {metrics['cross_entropy']:.4f}"
               if "cross_entropy" in metrics else "")
    return (f"accuracy {metrics['accuracy']:.4f}{entropy}  loss {metrics['loss']:.4f}{named}  "
            f"({metrics['n_examples']} images)")

"""Command line: argument parsing only; every command calls a library function.

``kerastl train|evaluate|predict|doctor|compare|lr_find|export`` and
``python -m kerastl.<command>``
are the same code, and all of their argparse lives here. The ``train`` and
``compare`` flags are generated from :class:`~kerastl.config.schema.RunConfig`'s fields
(help, group, choices, default), grouped as data / model / regime / optimisation /
runtime / output (timm's ``train.py`` grouping); ``--config FILE.yaml`` supplies
defaults that flags override, and the resolved run is saved as ``config.yaml``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from .compare import compare_main
from .doctor import doctor_main
from .evaluate import evaluate_main
from .export import export_main
from .flags import (
    EXIT_BAD_INPUT,
)
from .lr_find import lr_find_main
from .predict import predict_main
from .train import train_main

COMMANDS: dict[str, tuple[Callable[[Sequence[str] | None], int], str]] = {
    "train": (train_main, "train a model (python -m kerastl.train)"),
    "evaluate": (evaluate_main, "metrics of a saved model on a folder"),
    "predict": (predict_main, "CSV of predicted classes and probabilities"),
    "doctor": (doctor_main, "check an image folder for broken or suspicious files"),
    "compare": (compare_main, "frozen vs fine-tuned vs scratch vs scikit-learn on your data"),
    "lr_find": (lr_find_main, "learning-rate range test: loss vs learning rate, a suggestion"),
    "export": (export_main, "SavedModel / LiteRT (quantized) / ONNX, verified"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kerastl`` console script: ``kerastl COMMAND [ARGS]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: kerastl {" + ",".join(COMMANDS) + "} [--help] [ARGS]")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<9} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_BAD_INPUT
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

"""``kerastl predict``: predicted classes and probabilities for image files."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..outputs.inference import predict_paths
from .flags import (
    Parser,
    positive_int_flag,
    quiet_tensorflow,
    run_guarded,
)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.predict MODEL PATH...``: CSV of class and probabilities."""
    quiet_tensorflow(argv)
    parser = Parser(prog="python -m kerastl.predict",
                                     description="Predict classes of images with a saved model.")
    parser.add_argument("model", help="a kerastl run folder, or its model.keras")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--output", metavar="FILE.csv|DIR",
                        help="CSV path (default: stdout); a folder gets predictions.csv "
                        "(file,predicted,p_predicted)")
    parser.add_argument("--batch-size", type=positive_int_flag, default=64)
    args = parser.parse_args(argv)

    def action() -> int:
        text = predict_paths(args.model, args.inputs, output=args.output,
                             batch_size=args.batch_size)
        if args.output is None:
            sys.stdout.write(text)
        else:
            rows = max(text.count("\n") - 1, 0)
            print(f"Predictions for {rows} image(s) written to {args.output}")
        return 0

    return run_guarded(action)

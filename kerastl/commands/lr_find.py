"""``kerastl lr_find``: the learning-rate range test."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..recipes.fit import lr_find
from .flags import (
    float_flag,
    positive_int_flag,
    quiet_tensorflow,
    run_config_from,
    run_guarded,
    run_parser,
)


def lr_find_parser() -> argparse.ArgumentParser:
    """``train``'s flags plus the range of the learning-rate range test."""
    parser = run_parser(
        "python -m kerastl.lr_find",
        "Learning-rate range test (fastai's lr_find) for the run the flags "
        "describe: writes lr_find.png and lr_find.json to --output (default: a new "
        "runs/lr_findN) and prints the suggested learning rate.", skip=("resume", "phases"))
    group = parser.add_argument_group("range test")
    group.add_argument("--start-lr", type=float_flag, default=1e-7, help="(1e-07)")
    group.add_argument("--end-lr", type=float_flag, default=10.0, help="(10)")
    group.add_argument("--steps", type=positive_int_flag, default=100, help="(100)")
    return parser


def lr_find_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.lr_find``."""
    quiet_tensorflow(argv)
    parser = lr_find_parser()
    args = vars(parser.parse_args(argv))
    test = {key: args.pop(key) for key in ("start_lr", "end_lr", "steps")}

    def action() -> int:
        result = lr_find(run_config_from(args), **test)
        print(f"suggested learning rate: {result.suggestion:.3g}")
        return 0

    return run_guarded(action)

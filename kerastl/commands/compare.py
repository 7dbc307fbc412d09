"""``kerastl compare``: the regimes side by side on the user's own data."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..core.files import new_run_dir
from ..recipes.compare_regimes import REGIMES, compare, comparison_markdown
from .flags import (
    csv_flag,
    float_list_flag,
    quiet_tensorflow,
    run_config_from,
    run_guarded,
    run_parser,
)


def compare_parser() -> argparse.ArgumentParser:
    """``train``'s data/model/optimisation flags plus ``--regimes`` and ``--fractions``."""
    parser = run_parser(
        "python -m kerastl.compare",
        "Train frozen, fine-tuned and from-scratch models and a scikit-learn "
        "probe on the same data; write comparison.md/.json/.png in --output "
        "(default: a new runs/compareN).", skip=("mode", "resume", "phases"))
    group = parser.add_argument_group("comparison")
    group.add_argument("--regimes", type=csv_flag, default=list(REGIMES),
                       help=f"comma list of {','.join(REGIMES)}")
    group.add_argument("--fractions", type=float_list_flag, default=[1.0],
                       help="comma list of training fractions in (0, 1], e.g. 0.1,0.3,1.0")
    return parser


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.compare`` / ``kerastl compare``."""
    quiet_tensorflow(argv)
    parser = compare_parser()
    args = vars(parser.parse_args(argv))
    regimes, fractions = args.pop("regimes"), args.pop("fractions")

    def action() -> int:
        config = run_config_from(args)
        output = config.output or new_run_dir("compare")
        rows = compare(config, regimes=regimes, fractions=fractions, output=output)
        print(comparison_markdown(rows))
        print(f"Comparison written to {output.resolve() if hasattr(output, 'resolve') else output}")
        return 0

    return run_guarded(action)

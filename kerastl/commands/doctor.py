"""``kerastl doctor``: check an image folder or table for broken or suspicious files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.console import speaking_to_cli
from ..core.errors import DataError
from ..data.doctor import diagnose
from ..data.images import DEFAULT_MAX_PIXELS
from .flags import (
    EXIT_BAD_INPUT,
    Parser,
    in_flags,
    positive_int_flag,
)


def doctor_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m kerastl.doctor",
        description="Check an image-classification folder (one subfolder per class) "
        "for files that would break or skew training.",
    )
    parser.add_argument("data", metavar="DIR|CSV",
                        help="training folder, one subfolder per class, or a .csv of "
                        "path,label rows")
    parser.add_argument("--val-data", metavar="DIR|CSV",
                        help="validation folder or .csv to compare")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--max-pixels", type=positive_int_flag, default=DEFAULT_MAX_PIXELS,
                        help="refuse images larger than this many pixels (default: %(default)s)")
    return parser


def doctor_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.doctor DIR [--val-data DIR] [--json]``.

    Returns:
        int. Exit code: 0 when the data loads as it is, 1 when there are bad files,
        empty classes or mismatched classes, 2 when a folder cannot be read.
    """
    import json

    args = doctor_parser().parse_args(argv)

    try:
        report = diagnose(args.data, args.val_data, max_pixels=args.max_pixels)
    except DataError as error:
        print(f"kerastl: error: {in_flags(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with speaking_to_cli():
        print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1

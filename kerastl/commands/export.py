"""``kerastl export``: a trained run to SavedModel, LiteRT or ONNX, verified."""

from __future__ import annotations

from collections.abc import Sequence

from ..deploy.export import CALIBRATION_IMAGES, FORMATS, QUANTIZATIONS, export, run_splits_from
from .flags import (
    Parser,
    positive_int_flag,
    quiet_tensorflow,
    run_guarded,
)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.export RUN_DIR``: SavedModel / LiteRT / ONNX, verified."""
    quiet_tensorflow(argv)

    parser = Parser(
        prog="python -m kerastl.export",
        description="Export a finished run's model.keras to SavedModel, LiteRT (.tflite) or "
        "ONNX, run the file with its own runtime on the run's test (else validation) split, "
        "and write export_report.json (accuracy, agreement with Keras, size, latency).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a kerastl run")
    parser.add_argument("--format", choices=FORMATS, default="litert",
                        help="file format (litert)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="LiteRT only: float16 weights, dynamic-range int8 weights, or "
                        "full-integer int8 calibrated on training images (none)")
    parser.add_argument("--output", metavar="DIR",
                        help="export folder (default: RUN_DIR/exports/FORMAT[-QUANTIZE])")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--calibration-images", type=positive_int_flag, metavar="N",
                        default=CALIBRATION_IMAGES,
                        help=f"training images that calibrate int8 ({CALIBRATION_IMAGES})")
    parser.add_argument("--data", metavar="DIR", help="training folder, if the run's moved")
    parser.add_argument("--val-data", metavar="DIR", help="validation folder, if moved")
    parser.add_argument("--test-data", metavar="DIR", help="test folder, if moved")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip running the exported file on the evaluation split")
    parser.add_argument("--threads", type=positive_int_flag, metavar="N",
                        help="LiteRT/ONNX runtime threads (default: every core)")
    parser.add_argument("--keep-names", action="store_true",
                        help="LiteRT: keep tensor names (default: stripped, ~6%% smaller)")
    args = parser.parse_args(argv)

    def action() -> int:
        splits = run_splits_from(args.run_dir, args.data, args.val_data, args.test_data)
        export(args.run_dir, args.format, args.quantize, output=args.output,
               overwrite=args.overwrite, splits=splits,
               calibration_images=args.calibration_images, verify=args.verify,
               num_threads=args.threads, keep_names=args.keep_names)
        return 0

    return run_guarded(action)

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

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..config.schema import GROUPS, RunConfig, csv_list, field_default, load_yaml
from ..core import backend as _backend
from ..core.console import cli_language, speaking_to_cli
from ..core.errors import DataError, KerastlError, NonFiniteLossError, UnknownBackboneError
from ..core.files import new_run_dir
from ..data.doctor import diagnose
from ..data.images import DEFAULT_MAX_PIXELS
from ..deploy.export import CALIBRATION_IMAGES, FORMATS, QUANTIZATIONS, export, run_splits_from
from ..models.backbones import get_backbone
from ..outputs.inference import evaluate_folder, predict_paths
from ..outputs.interpretation import GRADCAM_CHOICES, TOP_LOSSES
from ..recipes.compare_regimes import REGIMES, compare, comparison_markdown
from ..recipes.fit import fit, lr_find
from ..training.trainer import Preempted

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 143


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets its error line and the valid values, not 39 lines
    of usage in front of them (issue 27)."""

    def error(self, message: str):  # argparse's hook; never returns
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n"
                                  f"(all flags: {self.prog} --help)\n")


# ---------------------------------------------------------------------- value parsers
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_int_or_auto(text: str) -> int | str:
    return "auto" if text.lower() == "auto" else _positive_int(text)


def _positive_float_or_auto(text: str) -> float | str:
    if text.lower() == "auto":
        return "auto"
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or auto, got {text!r}")
    return value


def _float_or_auto(text: str) -> float | str:
    return "auto" if text.lower() == "auto" else _float(text)


def _csv_list(text: str) -> list[str]:
    return csv_list(text)


def _int_list(text: str) -> list[int]:
    return [_positive_int(t) for t in _csv_list(text)]


def _float_list(text: str) -> list[float]:
    return [_float(t) for t in _csv_list(text)]


def _key_values(text: str) -> dict:
    import yaml

    pairs = {}
    for item in _csv_list(text):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        pairs[key.strip()] = yaml.safe_load(value)
    return pairs


def _backbone_name(text: str) -> str:
    try:
        return get_backbone(text).name
    except UnknownBackboneError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# The CLI parser of each RunConfig annotation (``from __future__ import annotations``
# keeps them as strings); fields with choices are checked by argparse itself.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str, "str | None": str, "int": _int, "int | None": _positive_int,
    "float": _float, "float | None": _float, "int | str": _positive_int_or_auto,
    "float | str": _positive_float_or_auto,
    "list[str]": _csv_list, "list[int]": _int_list, "list[float]": _float_list,
    "dict[str, Any]": _key_values,
}
_SPECIAL_PARSERS: dict[str, Callable[[str], Any]] = {
    "val_split": _float_or_auto,
    "backbone": _backbone_name, "batch_size": _positive_int, "image_size": _positive_int,
}


def _add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per :class:`RunConfig` field, in its group, with its default in the help."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for spec in dataclasses.fields(RunConfig):
        meta = spec.metadata
        if not meta.get("cli", True) or spec.name in skip:
            continue
        flag = meta.get("flag") or "--" + spec.name.replace("_", "-")
        default = field_default(spec)
        shown = _shown_default(default)
        help_text = meta["help"] + (f" ({shown})" if shown is not None else "")
        kwargs: dict[str, Any] = {"dest": spec.name, "help": help_text}
        if spec.type == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _SPECIAL_PARSERS.get(spec.name) or _PARSERS[spec.type]
            choices = meta.get("choices")
            if choices is not None and not spec.type.startswith("list"):
                kwargs["choices"] = choices
            kwargs["metavar"] = meta.get("metavar") or (
                "{" + ",".join(map(str, choices)) + "}" if choices else None)
        groups[meta["group"]].add_argument(flag, **kwargs)


def _shown_default(default: Any) -> str | None:
    if default is None or default is False or default == {}:
        return None
    if isinstance(default, list):
        return ",".join(map(str, default)) or "none"
    return f"{default:g}" if isinstance(default, float) else str(default)


def train_parser() -> argparse.ArgumentParser:
    """The ``train`` argument parser (also used to generate docs/cli.md)."""
    return _run_parser(
        "python -m kerastl.train",
        "Train a Keras Applications backbone on a folder of labelled images. "
        "With no arguments: a transfer-learning run on the shipped data_samples/ (offline).")


def _run_parser(prog: str, description: str,
                skip: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A parser of ``--config`` and the RunConfig flags (but ``skip``), none defaulted.

    Unset flags are left out of the namespace, so :func:`_run_config` marks only the
    flags actually given as given.
    """
    parser = Parser(prog=prog, description=description,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML file of defaults (flags override it)")
    _add_config_flags(parser, skip=skip)
    return parser


def _run_config(args: dict[str, Any]):
    """Defaults ← ``--config`` YAML ← the parsed flags in ``args``, as a RunConfig."""
    values = load_yaml(args.pop("config")) if "config" in args else {}
    values.update(args)
    return RunConfig.from_dict(values)


def config_from_args(argv: Sequence[str] | None,
                     parser: argparse.ArgumentParser | None = None):
    """Defaults ← ``--config`` YAML ← flags, as one :class:`~kerastl.config.schema.RunConfig`.

    Only the flags and YAML keys actually given are marked as given.
    """
    return _run_config(vars((parser or train_parser()).parse_args(argv)))


# ---------------------------------------------------------------------- running
def _quiet_tensorflow(argv: Sequence[str] | None) -> None:
    """Before TensorFlow is imported: keep its C++ log unless ``--verbose 2``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--verbose=") else (
            argv[i + 1] if arg == "--verbose" and i + 1 < len(argv) else None)
        if value == "2":
            _backend.show_tensorflow_log()


def run_guarded(action: Callable[[], int]) -> int:
    """Run a command; kerastl errors become one-line messages and exit codes."""
    try:
        with speaking_to_cli():
            return action()
    except NonFiniteLossError as error:
        print(f"kerastl: error: {in_flags(error)}", file=sys.stderr)
        return EXIT_DIVERGED
    except Preempted as stop:
        print(f"kerastl: stopped by SIGTERM; {stop} Resume with the same command plus "
              "--resume.", file=sys.stderr)
        return EXIT_PREEMPTED
    except (KerastlError, FileNotFoundError) as error:
        print(f"kerastl: error: {in_flags(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def in_flags(error: BaseException) -> str:
    """An error's text with its Python-style hints (``lr=1e-3``) written as flags.

    Library messages name arguments; on the command line the same hint names the
    flag (``--lr 1e-3``), as the user types it.
    """
    flags = {spec.name: spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")
             for spec in dataclasses.fields(RunConfig) if spec.metadata.get("cli", True)}
    return cli_language(str(error), flags)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.train``."""
    _quiet_tensorflow(argv)
    config = config_from_args(argv)

    def action() -> int:
        fit(config)
        return 0

    return run_guarded(action)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.evaluate MODEL DIR``: metrics of a saved model on a folder."""
    _quiet_tensorflow(argv)
    parser = Parser(prog="python -m kerastl.evaluate",
                                     description="Evaluate a saved kerastl model on a folder.")
    parser.add_argument("model", help="a kerastl run folder, or its model.keras")
    parser.add_argument("data", help="folder of class subfolders (same classes)")
    parser.add_argument("--output", metavar="DIR", help="write metrics.json, predictions.csv, "
                        "interpretation.json, top_losses.png, gradcam.npz and report.html here")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
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
    group.add_argument("--top-losses", type=_int, default=TOP_LOSSES, metavar="K",
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


def predict_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.predict MODEL PATH...``: CSV of class and probabilities."""
    _quiet_tensorflow(argv)
    parser = Parser(prog="python -m kerastl.predict",
                                     description="Predict classes of images with a saved model.")
    parser.add_argument("model", help="a kerastl run folder, or its model.keras")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--output", metavar="FILE.csv|DIR",
                        help="CSV path (default: stdout); a folder gets predictions.csv "
                        "(file,predicted,p_predicted)")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
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
    parser.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images larger than this many pixels (default: %(default)s)")
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.export RUN_DIR``: SavedModel / LiteRT / ONNX, verified."""
    _quiet_tensorflow(argv)

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
    parser.add_argument("--calibration-images", type=_positive_int, metavar="N",
                        default=CALIBRATION_IMAGES,
                        help=f"training images that calibrate int8 ({CALIBRATION_IMAGES})")
    parser.add_argument("--data", metavar="DIR", help="training folder, if the run's moved")
    parser.add_argument("--val-data", metavar="DIR", help="validation folder, if moved")
    parser.add_argument("--test-data", metavar="DIR", help="test folder, if moved")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip running the exported file on the evaluation split")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
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


def compare_parser() -> argparse.ArgumentParser:
    """``train``'s data/model/optimisation flags plus ``--regimes`` and ``--fractions``."""
    parser = _run_parser(
        "python -m kerastl.compare",
        "Train frozen, fine-tuned and from-scratch models and a scikit-learn "
        "probe on the same data; write comparison.md/.json/.png in --output "
        "(default: a new runs/compareN).", skip=("mode", "resume", "phases"))
    group = parser.add_argument_group("comparison")
    group.add_argument("--regimes", type=_csv_list, default=list(REGIMES),
                       help=f"comma list of {','.join(REGIMES)}")
    group.add_argument("--fractions", type=_float_list, default=[1.0],
                       help="comma list of training fractions in (0, 1], e.g. 0.1,0.3,1.0")
    return parser


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.compare`` / ``kerastl compare``."""
    _quiet_tensorflow(argv)
    parser = compare_parser()
    args = vars(parser.parse_args(argv))
    regimes, fractions = args.pop("regimes"), args.pop("fractions")

    def action() -> int:
        config = _run_config(args)
        output = config.output or new_run_dir("compare")
        rows = compare(config, regimes=regimes, fractions=fractions, output=output)
        print(comparison_markdown(rows))
        print(f"Comparison written to {output.resolve() if hasattr(output, 'resolve') else output}")
        return 0

    return run_guarded(action)


def lr_find_parser() -> argparse.ArgumentParser:
    """``train``'s flags plus the range of the learning-rate range test."""
    parser = _run_parser(
        "python -m kerastl.lr_find",
        "Learning-rate range test (fastai's lr_find) for the run the flags "
        "describe: writes lr_find.png and lr_find.json to --output (default: a new "
        "runs/lr_findN) and prints the suggested learning rate.", skip=("resume", "phases"))
    group = parser.add_argument_group("range test")
    group.add_argument("--start-lr", type=_float, default=1e-7, help="(1e-07)")
    group.add_argument("--end-lr", type=_float, default=10.0, help="(10)")
    group.add_argument("--steps", type=_positive_int, default=100, help="(100)")
    return parser


def lr_find_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.lr_find``."""
    _quiet_tensorflow(argv)
    parser = lr_find_parser()
    args = vars(parser.parse_args(argv))
    test = {key: args.pop(key) for key in ("start_lr", "end_lr", "steps")}

    def action() -> int:
        result = lr_find(_run_config(args), **test)
        print(f"suggested learning rate: {result.suggestion:.3g}")
        return 0

    return run_guarded(action)


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

"""Command line: argument parsing only; every command calls a library function.

``kerastl train|evaluate|predict|doctor|compare|export`` and ``python -m kerastl.<command>``
are the same code. Flags are grouped as data / model / regime / optimisation /
runtime / output (timm's ``train.py`` grouping); ``--config FILE.yaml`` supplies
defaults that flags override, and the resolved run is saved as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .config import CLASS_WEIGHTS, FEATURE_CACHE, OPTIMIZERS, SCHEDULES, RunConfig, load_yaml

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 143


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def _csv_list(text: str) -> list[str]:
    return [] if text.lower() in ("", "none", "off") else [t.strip() for t in text.split(",")]


def _int_list(text: str) -> list[int]:
    return [_positive_int(t) for t in _csv_list(text)]


def _key_values(text: str) -> dict:
    import yaml

    pairs = {}
    for item in _csv_list(text):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        pairs[key.strip()] = yaml.safe_load(value)
    return pairs


def _weights(text: str) -> str | None:
    return None if text.lower() == "none" else text


def train_parser() -> argparse.ArgumentParser:
    """The ``train`` argument parser (also used to generate docs/cli.md)."""
    from .backbones import list_backbones
    from .freezing import BN_POLICIES, MODES

    parser = argparse.ArgumentParser(
        prog="python -m kerastl.train",
        description="Train a Keras Applications backbone on a folder of labelled images. "
        "With no arguments: a transfer-learning run on the shipped data_samples/ (offline).",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML file of defaults (flags override it)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="DIR", help="training folder of class subfolders "
                      "(default: data_samples/fashion)")
    data.add_argument("--val-data", metavar="DIR", help="validation folder (same classes)")
    data.add_argument("--test-data", metavar="DIR", help="test folder (same classes)")
    data.add_argument("--val-split", type=_fraction, metavar="F",
                      help="fraction of --data held out when --val-data is absent (0.2)")
    data.add_argument("--image-size", type=_positive_int, metavar="S",
                      help="square input side (backbone default)")
    data.add_argument("--batch-size", type=_positive_int, metavar="B",
                      help="batch size per replica (32)")
    data.add_argument("--augment", type=_csv_list, metavar="LIST",
                      help="comma list of flip,rotation,zoom,contrast,translate or 'none' "
                      "(flip,translate)")
    data.add_argument("--on-bad-file", choices=("error", "skip"),
                      help="unreadable images: stop with the list, or skip them (error)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=list_backbones(), metavar="NAME",
                       help="Keras Applications backbone (MobileNetV2; with no --data, the "
                       "shipped source backbone); "
                       "see kerastl.list_backbones()")
    model.add_argument("--backbone-args", type=_key_values, dest="backbone_kwargs",
                       metavar="K=V,...", help="constructor arguments, e.g. alpha=0.35")
    model.add_argument("--weights", type=_weights, metavar="imagenet|none|PATH",
                       help="pretrained base weights (imagenet)")
    model.add_argument("--weights-hash", metavar="SHA256", help="expected SHA-256 of --weights")
    model.add_argument("--head", choices=("flatten", "avg", "max", "sklearn-logreg",
                                          "sklearn-linear-svm", "sklearn-knn"),
                       help="pooling of a Keras head (avg), or a scikit-learn head on "
                       "frozen features")
    model.add_argument("--dense-units", type=_int_list, metavar="N,N",
                       help="hidden Dense layers of the head, or 'none' (none)")
    model.add_argument("--dropout", type=float, metavar="P", help="head dropout (0.2)")
    model.add_argument("--head-norm", choices=("none", "layer", "batch"),
                       help="normalise pooled features before the head (layer)")
    model.add_argument("--task", choices=("multiclass", "binary", "multilabel"))
    regime = parser.add_argument_group("regime")
    regime.add_argument("--mode", choices=MODES, help="frozen | finetune | full | scratch "
                        "(finetune/full: head warm-up, then the top blocks / all layers at "
                        "lr * finetune-lr-factor) (full)")
    regime.add_argument("--unfreeze-top", type=_positive_int, metavar="N",
                        help="finetune: the top N layers (classic base.layers[-N:])")
    regime.add_argument("--unfreeze-blocks", type=_positive_int, metavar="K",
                        help="finetune: the top K blocks (never splits a residual block) (2)")
    regime.add_argument("--bn-policy", choices=BN_POLICIES,
                        help="BatchNorm while fine-tuning: frozen (inference mode) or train")
    regime.add_argument("--head-epochs", type=_positive_int, metavar="E",
                        help="head warm-up epochs before unfreezing (epochs // 3)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=_positive_int, metavar="E", help="total epochs (10)")
    opt.add_argument("--lr", type=_positive_float, metavar="X",
                     help="peak learning rate of the head phase (1e-2)")
    opt.add_argument("--finetune-lr-factor", type=_positive_float, metavar="F",
                     help="unfrozen phases use lr * F (0.1)")
    opt.add_argument("--optimizer", choices=OPTIMIZERS)
    opt.add_argument("--schedule", choices=SCHEDULES)
    opt.add_argument("--warmup-fraction", type=float, metavar="F",
                     help="share of each phase spent warming the lr up (0.1)")
    opt.add_argument("--weight-decay", type=float, metavar="W")
    opt.add_argument("--label-smoothing", type=float, metavar="S")
    opt.add_argument("--class-weight", choices=CLASS_WEIGHTS)
    opt.add_argument("--early-stopping", type=_positive_int, metavar="PATIENCE",
                     help="stop a phase after PATIENCE epochs without val_loss progress and "
                     "restore its best weights")
    opt.add_argument("--prune", type=_fraction, metavar="SPARSITY",
                     help="magnitude-prune the last phase that trains the base to this share "
                     "of zero weights (e.g. 0.5), gradually; writes pruning.json")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--strategy", choices=("auto", "default", "mirrored", "multiworker",
                                                "tpu"))
    runtime.add_argument("--precision", choices=("auto", "float32", "mixed_float16",
                                                 "mixed_bfloat16"))
    runtime.add_argument("--seed", type=int, metavar="N")
    runtime.add_argument("--jit-compile", choices=("auto", "on", "off"))
    runtime.add_argument("--steps-per-execution", type=_positive_int, metavar="N")
    runtime.add_argument("--feature-cache", choices=FEATURE_CACHE,
                         help="frozen phases train the head on cached base features")
    runtime.add_argument("--feature-cache-dir", metavar="DIR",
                         help="disk cache for features larger than the memory budget")
    output = parser.add_argument_group("output")
    output.add_argument("--output", metavar="DIR", help="output directory (runs/latest)")
    output.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output")
    output.add_argument("--verbose", type=int, choices=(0, 1, 2))
    return parser


def config_from_args(argv: Sequence[str] | None) -> RunConfig:
    """Defaults ← ``--config`` YAML ← flags, as one :class:`RunConfig`."""
    args = vars(train_parser().parse_args(argv))
    values = load_yaml(args.pop("config")) if "config" in args else {}
    values.update(args)
    return RunConfig.from_dict(values)


def _run_guarded(action: Callable[[], int]) -> int:
    """Turn kerastl errors into one-line messages and exit codes."""
    from .errors import KerastlError, NonFiniteLossError
    from .training import Preempted

    try:
        return action()
    except NonFiniteLossError as error:
        print(f"kerastl: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except Preempted:
        print("kerastl: stopped by SIGTERM; the last completed epoch is checkpointed. "
              "Resume with the same command plus --resume.", file=sys.stderr)
        return EXIT_PREEMPTED
    except (KerastlError, FileNotFoundError) as error:
        print(f"kerastl: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.train``."""
    config = config_from_args(argv)

    def action() -> int:
        from .run import fit

        fit(config)
        return 0

    return _run_guarded(action)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.evaluate MODEL DIR``: metrics of a saved model on a folder."""
    parser = argparse.ArgumentParser(prog="python -m kerastl.evaluate",
                                     description="Evaluate a saved kerastl model on a folder.")
    parser.add_argument("model", help="model.keras from a kerastl run")
    parser.add_argument("data", help="folder of class subfolders (same classes)")
    parser.add_argument("--output", metavar="DIR", help="write metrics.json and the report here")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    args = parser.parse_args(argv)

    def action() -> int:
        from .inference import evaluate_folder

        metrics = evaluate_folder(args.model, args.data, output=args.output,
                                  batch_size=args.batch_size)
        print(f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  "
              f"({metrics['n_examples']} images)")
        return 0

    return _run_guarded(action)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.predict MODEL PATH...``: CSV of class and probabilities."""
    parser = argparse.ArgumentParser(prog="python -m kerastl.predict",
                                     description="Predict classes of images with a saved model.")
    parser.add_argument("model", help="model.keras from a kerastl run")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--output", metavar="FILE.csv", help="CSV path (default: stdout)")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    args = parser.parse_args(argv)

    def action() -> int:
        from .inference import predict_paths

        text = predict_paths(args.model, args.inputs, output=args.output,
                             batch_size=args.batch_size)
        if args.output is None:
            sys.stdout.write(text)
        return 0

    return _run_guarded(action)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.export RUN_DIR``: SavedModel / LiteRT / ONNX, verified."""
    from .deploy import CALIBRATION_IMAGES, FORMATS, QUANTIZATIONS

    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)

    def action() -> int:
        from .deploy import export, run_splits_from

        splits = run_splits_from(args.run_dir, args.data, args.val_data, args.test_data)
        export(args.run_dir, args.format, args.quantize, output=args.output,
               overwrite=args.overwrite, splits=splits,
               calibration_images=args.calibration_images, verify=args.verify,
               num_threads=args.threads)
        return 0

    return _run_guarded(action)


def doctor_main(argv: Sequence[str] | None = None) -> int:
    from .doctor import main

    return main(argv)


def compare_main(argv: Sequence[str] | None = None) -> int:
    from .compare import main

    return main(argv)


COMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "train": train_main,
    "evaluate": evaluate_main,
    "predict": predict_main,
    "doctor": doctor_main,
    "compare": compare_main,
    "export": export_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kerastl`` console script: ``kerastl COMMAND [ARGS]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: kerastl {" + ",".join(COMMANDS) + "} [--help] [ARGS]")
        print("  train     train a model (python -m kerastl.train)")
        print("  evaluate  metrics of a saved model on a folder")
        print("  predict   CSV of predicted classes and probabilities")
        print("  doctor    check an image folder for broken or suspicious files")
        print("  compare   frozen vs fine-tuned vs scratch vs scikit-learn on your data")
        print("  export    SavedModel / LiteRT (quantized) / ONNX, verified")
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_BAD_INPUT
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

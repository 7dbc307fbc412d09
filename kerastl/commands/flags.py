"""Flags shared by the commands: value parsers, the RunConfig flag groups, and how errors
end a command."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..config.schema import GROUPS, RunConfig, csv_list, field_default, load_yaml
from ..core import backend as _backend
from ..core.console import cli_language, speaking_to_cli
from ..core.errors import KerastlError, NonFiniteLossError, UnknownBackboneError
from ..models.backbones import get_backbone
from ..training.phase_data import Preempted

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
def positive_int_flag(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_flag(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def float_flag(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int_or_auto_flag(text: str) -> int | str:
    return "auto" if text.lower() == "auto" else positive_int_flag(text)


def _positive_float_or_auto(text: str) -> float | str:
    if text.lower() == "auto":
        return "auto"
    value = float_flag(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or auto, got {text!r}")
    return value


def _float_or_auto(text: str) -> float | str:
    return "auto" if text.lower() == "auto" else float_flag(text)


def csv_flag(text: str) -> list[str]:
    return csv_list(text)


def int_list_flag(text: str) -> list[int]:
    return [positive_int_flag(t) for t in csv_flag(text)]


def float_list_flag(text: str) -> list[float]:
    return [float_flag(t) for t in csv_flag(text)]


def _key_values(text: str) -> dict:
    import yaml

    pairs = {}
    for item in csv_flag(text):
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
    "str": str, "str | None": str, "int": int_flag, "int | None": positive_int_flag,
    "float": float_flag, "float | None": float_flag, "int | str": positive_int_or_auto_flag,
    "float | str": _positive_float_or_auto,
    "list[str]": csv_flag, "list[int]": int_list_flag, "list[float]": float_list_flag,
    "dict[str, Any]": _key_values,
}


_SPECIAL_PARSERS: dict[str, Callable[[str], Any]] = {
    "val_split": _float_or_auto,
    "backbone": _backbone_name, "batch_size": positive_int_flag, "image_size": positive_int_flag,
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
    return run_parser(
        "python -m kerastl.train",
        "Train a Keras Applications backbone on a folder of labelled images. "
        "With no arguments: a transfer-learning run on the shipped data_samples/ (offline).")


def run_parser(prog: str, description: str,
                skip: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A parser of ``--config`` and the RunConfig flags (but ``skip``), none defaulted.

    Unset flags are left out of the namespace, so :func:`run_config_from` marks only the
    flags actually given as given.
    """
    parser = Parser(prog=prog, description=description,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML file of defaults (flags override it)")
    _add_config_flags(parser, skip=skip)
    return parser


def run_config_from(args: dict[str, Any]):
    """Defaults ← ``--config`` YAML ← the parsed flags in ``args``, as a RunConfig."""
    values = load_yaml(args.pop("config")) if "config" in args else {}
    values.update(args)
    return RunConfig.from_dict(values)


def config_from_args(argv: Sequence[str] | None,
                     parser: argparse.ArgumentParser | None = None):
    """Defaults ← ``--config`` YAML ← flags, as one :class:`~kerastl.config.schema.RunConfig`.

    Only the flags and YAML keys actually given are marked as given.
    """
    return run_config_from(vars((parser or train_parser()).parse_args(argv)))


# ---------------------------------------------------------------------- running
def quiet_tensorflow(argv: Sequence[str] | None) -> None:
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

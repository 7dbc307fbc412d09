"""Exceptions raised by kerastl.

Every kerastl error says what it received and how to fix it. They subclass the
built-in exception a Keras user would expect (``ValueError``, ``FileNotFoundError``),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import re
from typing import Any


class KerastlError(Exception):
    """Base class of every error kerastl raises on purpose."""


class ConfigError(KerastlError, ValueError):
    """A configuration value (argument, flag or YAML key) is not valid."""


class UnknownBackboneError(ConfigError, KeyError):
    """The backbone name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message.
        return str(self.args[0])


class WeightsError(KerastlError, ValueError):
    """Pretrained weights could not be downloaded, read or matched to the model."""


class DataError(KerastlError, ValueError):
    """The training data cannot be used as given (missing, empty, mismatched)."""


class StaleTrainableError(KerastlError, RuntimeError):
    """Trainable flags changed since the model was compiled."""


class NonFiniteLossError(KerastlError, RuntimeError):
    """Training produced a NaN or Inf loss."""


class MissingDependencyError(KerastlError, ImportError):
    """An optional package (an extra such as ``kerastl[export]``) is not installed."""


def check_int(name: str, value: Any, minimum: int = 1, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int (not a bool) >= ``minimum``.

    Example:
        >>> check_int("batch_size", 32)
        >>> check_int("seed", -1, minimum=0)
        Traceback (most recent call last):
        ...
        kerastl.core.errors.ConfigError: seed must be an integer >= 0; received seed=-1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {kind}{hint}; received {name}={value!r}.")


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(name: str, text: str) -> int:
    """Bytes from a size such as ``"512M"``, ``"2G"``, ``"1.5k"`` or ``"4096"``.

    Example:
        >>> parse_size("decoded_memory", "1.5k")
        1536
        >>> parse_size("decoded_memory", "lots")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kerastl.core.errors.ConfigError: decoded_memory must be 'auto', a number of bytes ...
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise ConfigError(f"{name} must be 'auto', a number of bytes or a size like '512M' or "
                          f"'2G'; received {name}={text!r}.")
    return int(float(match.group(1)) * _UNITS[match.group(2)])

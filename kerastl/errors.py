"""Exceptions raised by kerastl.

Every kerastl error says what it received and how to fix it. They subclass the
built-in exception a Keras user would expect (``ValueError``, ``FileNotFoundError``),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations


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

"""kerastl's version, in the ground floor so every layer may quote it."""

__version__ = "0.2.0"

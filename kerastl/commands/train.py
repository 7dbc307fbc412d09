"""``kerastl train``: fit a model from flags or a YAML config."""

from __future__ import annotations

from collections.abc import Sequence

from ..recipes.fit import fit
from .flags import (
    config_from_args,
    quiet_tensorflow,
    run_guarded,
)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python -m kerastl.train``."""
    quiet_tensorflow(argv)
    config = config_from_args(argv)

    def action() -> int:
        fit(config)
        return 0

    return run_guarded(action)

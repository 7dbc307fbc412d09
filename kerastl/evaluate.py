"""``python -m kerastl.evaluate``: see ``--help``."""

from .commands.evaluate import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())

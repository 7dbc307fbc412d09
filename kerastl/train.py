"""``python -m kerastl.train``: see ``--help``."""

from .commands.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())

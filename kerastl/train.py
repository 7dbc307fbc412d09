"""``python -m kerastl.train``: see ``--help``."""

from .commands.train import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())

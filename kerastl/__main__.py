"""``python -m kerastl COMMAND``: the same as the ``kerastl`` console script."""

from .commands.cli import main

raise SystemExit(main())

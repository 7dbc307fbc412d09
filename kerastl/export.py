"""``python -m kerastl.export``: see ``--help``. ``kerastl.export`` is the function."""

import sys

from .commands.export import export_main
from .deploy.export import export

if __name__ == "__main__":
    raise SystemExit(export_main())
# Imported as a module (``import kerastl.export``), stand in for the function, so the
# package attribute ``kerastl.export`` stays the function whichever way it was imported.
sys.modules[__name__] = export

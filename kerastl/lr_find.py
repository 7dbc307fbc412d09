"""``python -m kerastl.lr_find``: see ``--help``. ``kerastl.lr_find`` is the function."""

import sys

from .commands.lr_find import lr_find_main
from .recipes.fit import lr_find

if __name__ == "__main__":
    raise SystemExit(lr_find_main())
# Imported as a module (``import kerastl.lr_find``), stand in for the function, so the
# package attribute ``kerastl.lr_find`` stays the function whichever way it was imported.
sys.modules[__name__] = lr_find

"""``python -m kerastl.compare``: see ``--help``. ``kerastl.compare`` is the function."""

import sys

from .commands.compare import compare_main
from .recipes.compare_regimes import compare

if __name__ == "__main__":
    raise SystemExit(compare_main())
# Imported as a module (``import kerastl.compare``), stand in for the function, so the
# package attribute ``kerastl.compare`` stays the function whichever way it was imported.
sys.modules[__name__] = compare

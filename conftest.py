"""Doctest collection: every ``>>>`` example in kerastl/ runs (``--doctest-modules``).

The command-line stubs are left out: importing ``kerastl/lr_find.py`` as a module
would rebind the package attribute ``kerastl.lr_find`` (the function) to it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

collect_ignore = [
    "kerastl/__main__.py",
    "kerastl/train.py",
    "kerastl/evaluate.py",
    "kerastl/predict.py",
    "kerastl/lr_find.py",
    "kerastl/export.py",
    "kerastl/doctor.py",
    "kerastl/compare.py",
    "scripts",
    "benchmarks",
    "notebooks",
]

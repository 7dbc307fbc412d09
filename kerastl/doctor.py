"""``python -m kerastl.doctor DIR``: see ``--help``. The function is ``kerastl.diagnose``."""

from .commands.doctor import doctor_main

if __name__ == "__main__":
    raise SystemExit(doctor_main())

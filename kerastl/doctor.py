"""``python -m kerastl.doctor DIR``: see ``--help``. The function is ``kerastl.diagnose``."""

if __name__ == "__main__":
    from .cli import doctor_main

    raise SystemExit(doctor_main())

"""``python -m kerastl.lr_find``: see ``--help``. The function is ``kerastl.lr_find``."""

if __name__ == "__main__":
    from .cli import lr_find_main

    raise SystemExit(lr_find_main())

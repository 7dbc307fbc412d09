"""``python -m kerastl.predict``: see ``--help``."""

from .commands.predict import predict_main

if __name__ == "__main__":
    raise SystemExit(predict_main())

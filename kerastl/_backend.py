"""Make sure Keras runs on TensorFlow before anything else is imported.

kerastl is a TensorFlow framework (tf.data, tf.distribute, TPUs), so it pins the
Keras backend and checks that a TensorFlow it supports is installed. TensorFlow is
an *extra* (``kerastl[cpu]``, ``kerastl[gpu]``, ``kerastl[tpu]``) so that installing
kerastl on a Colab TPU VM never replaces ``tensorflow-tpu`` with plain ``tensorflow``.
"""

from __future__ import annotations

import os

MIN_TENSORFLOW = (2, 20)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow as tf  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without TF
    raise ImportError(
        "kerastl needs TensorFlow but it is not installed. Install it with one of: "
        "pip install 'kerastl[cpu]' (CPU), pip install 'kerastl[gpu]' (NVIDIA GPU), "
        "pip install 'kerastl[tpu]' (Colab/Cloud TPU VM)."
    ) from error

import keras  # noqa: E402


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


if _version_tuple(tf.__version__) < MIN_TENSORFLOW:  # pragma: no cover
    raise ImportError(
        f"kerastl needs TensorFlow >= {'.'.join(map(str, MIN_TENSORFLOW))}; "
        f"found {tf.__version__}. Upgrade with: pip install -U 'kerastl[cpu]'."
    )

if keras.backend.backend() != "tensorflow":  # pragma: no cover
    raise ImportError(
        f"kerastl runs on the TensorFlow backend of Keras, but KERAS_BACKEND="
        f"{keras.backend.backend()!r}. Unset KERAS_BACKEND or set it to 'tensorflow' "
        "before importing keras."
    )

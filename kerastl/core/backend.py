"""Make sure Keras runs on TensorFlow before anything else is imported.

kerastl is a TensorFlow framework (tf.data, tf.distribute, TPUs), so it pins the
Keras backend and checks that a TensorFlow it supports is installed. TensorFlow is
an *extra* (``kerastl[cpu]``, ``kerastl[gpu]``, ``kerastl[tpu]``) so that installing
kerastl on a Colab TPU VM never replaces ``tensorflow-tpu`` with plain ``tensorflow``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

MIN_TENSORFLOW = (2, 20)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# TensorFlow's C++ runtime prints a page of INFO/ERROR lines on import and during
# training (oneDNN notices, "could not find cuda drivers", harmless cuInit and
# tf.data thread-pool "errors") that look like failures to a new user. Unless the
# user chose a level (TF_CPP_MIN_LOG_LEVEL), kerastl keeps only fatal ones and holds
# back what is printed while TensorFlow is imported: `--verbose 2` replays it, and
# an import that fails prints it.
IMPORT_LOG = ""
_QUIET = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
if _QUIET:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


@contextlib.contextmanager
def _stderr_held_back():
    """Send file descriptor 2 (C++ stderr) to a temporary file while the block runs."""
    global IMPORT_LOG
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr (some embedded interpreters): nothing to hold
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            IMPORT_LOG = held.read().decode(errors="replace")


def show_tensorflow_log() -> None:
    """Print what TensorFlow logged while it was imported (``--verbose 2``)."""
    if IMPORT_LOG:
        sys.stderr.write(IMPORT_LOG)


try:
    with _stderr_held_back() if _QUIET else contextlib.nullcontext():
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


def single_threaded_blas():
    """A context in which NumPy/SciPy/scikit-learn's BLAS and OpenMP run one thread.

    In a process where TensorFlow has run, its thread pools keep their threads
    spinning for a while after each op; OpenBLAS threads started next to them fight
    for the same cores. MEASURED on this 2-core machine: scikit-learn's lbfgs
    logistic regression on 100 x 2048 ResNet50 features, 0.08-0.32 s per fit with one
    thread against 1.2-4.8 s with two (15x); a transfer-suite run's probe epoch
    (36 such fits) had taken 607 s. Fits this small gain nothing from a second
    thread anyway.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)

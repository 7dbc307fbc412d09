"""Tolerances for floats that two code paths compute, derived once from the arithmetic.

Two paths that compute the same mathematical value with float operations in another
order agree only up to rounding: another batch size (oneDNN tiles the batch
differently), AVX2 instead of AVX-512 kernels (8 instead of 16 float32 lanes per partial
sum), one replica or two. A tolerance not derived from that rounding either fails on
another CPU (issue 16: ``rtol=1e-6`` without an absolute term failed on AVX2 for
features near zero) or is so loose that it cannot fail.

The model. An output of a convolution or dense layer is a sum of ``n`` products. Any
summation order lands within ``n * u * sum|x * w|`` of the exact sum, ``u`` being the
unit roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, eq. 3.5).
That bound assumes every rounding error has the same sign; they do not, and the error
grows like ``sqrt(n) * u * sum|x * w|`` instead (Higham & Mary, "A new approach to
probabilistic rounding error analysis", SIAM J. Sci. Comput., 2019). Two facts follow:

* An element's error is proportional to the size of the terms summed into it, not to
  the element: one that cancels to ~0 still carries the rounding of its large terms. So
  the absolute term of every tolerance is proportional to the tensor's scale (its
  largest ``|value|``), and an elementwise ``rtol`` alone is never enough.
* Layers add their errors (normalised layers neither shrink nor grow them much), so a
  network of ``L`` layers whose largest dot product has ``n`` terms is off by about
  ``L * sqrt(n) * u``; two orders can be off in opposite directions (factor 2), and
  :data:`SAFETY` covers the tail of the probabilistic bound.

Bit-identical checks (``assert_array_equal``) stay only where both sides run the same
operations in the same order on the same data (a same-seed rerun, a value served back
from a cache, weights copied into another model); each says so where it is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# float32 keeps 24 significant bits, so rounding moves a value by at most 2**-24 of it.
F32_UNIT_ROUNDOFF = 2.0**-24
# bfloat16 keeps 8 significant bits (7 stored): 2**-8, about 0.4 %, per rounding.
BF16_UNIT_ROUNDOFF = 2.0**-8
# A factor over the typical error lambda * sqrt(n) * u (Higham & Mary's lambda; their
# probability bound, 1 - 2n exp(-lambda^2 / 2), is loose for large n). The bound is
# relative to sum|x*w| >= |output| besides; the measurements next to each tolerance below
# show the room left.
SAFETY = 4.0


@dataclass(frozen=True)
class Tolerance:
    """How far two paths may disagree, relative to each element and to the tensor's scale.

    Attributes:
        rtol: float. Allowed ``|actual - desired|`` per unit of ``|desired|``, and the
            absolute term per unit of the tensor's scale ``max |desired|``.
        why: str. The arithmetic behind ``rtol``, quoted in failure messages.
    """

    rtol: float
    why: str

    def atol(self, desired: np.ndarray) -> float:
        """Absolute term: ``rtol`` times the largest ``|desired|`` (tiny for all zeros)."""
        scale = float(np.max(np.abs(desired), initial=0.0))
        return self.rtol * max(scale, float(np.finfo(np.float32).tiny))


def reordered(terms: int, layers: int, unit_roundoff: float = F32_UNIT_ROUNDOFF) -> Tolerance:
    """Two evaluations of a ``layers``-deep network that add ``terms`` products per output.

    Example:
        >>> tol = reordered(terms=4608, layers=15)
        >>> 1e-4 < tol.rtol < 1e-3
        True
    """
    rtol = 2 * SAFETY * layers * math.sqrt(terms) * unit_roundoff
    return Tolerance(rtol, f"{layers} layers x sqrt({terms} terms) x u={unit_roundoff:.2g}, "
                           f"x2 orders x{SAFETY:g} safety")


def elementwise(ops: int, unit_roundoff: float = F32_UNIT_ROUNDOFF) -> Tolerance:
    """Two implementations of ``ops`` elementwise float operations on the same inputs.

    Each rounding moves a value by at most ``u`` of it, but of the operands, not the
    result: ``x - mean`` near 0 carries the rounding of ``x``. Hence, again, the
    scale-relative absolute term.

    Example:
        >>> elementwise(ops=2).rtol < 1e-6
        True
    """
    rtol = 2 * SAFETY * ops * unit_roundoff
    return Tolerance(rtol, f"{ops} elementwise ops x u={unit_roundoff:.2g}, x2 sides "
                           f"x{SAFETY:g} safety")


def resumed(steps: int) -> Tolerance:
    """A run resumed from a checkpoint against the same run uninterrupted.

    Both perform the same operations in the same order on the same data, so they are
    expected to agree exactly. What a new process could still change (a reduction split
    differently between threads, say) is a one-ulp (``u``) perturbation, which each of
    the ``steps`` optimizer steps carries forward and adds to at most once more.

    Example:
        >>> 1e-6 < resumed(steps=32).rtol < 1e-4
        True
    """
    rtol = 2 * SAFETY * steps * F32_UNIT_ROUNDOFF
    return Tolerance(rtol, f"one ulp carried through {steps} steps x2 runs x{SAFETY:g} safety")


def assert_same_training(actual, desired, initial, tol: Tolerance, err_msg: str = "") -> None:
    """Weights trained from the same ``initial`` values along two summation orders.

    Rounding perturbs each optimizer update by at most ``tol.rtol`` of itself (the
    gradient is a reordered sum like any other), so the two end points differ by at most
    ``tol.rtol`` times the distance travelled, ``max |desired - initial|``, plus the
    rounding of the weights themselves. A weight that did not move must match to that
    rounding; a wrong update (a loss averaged per replica, say) is off by a whole step.
    """
    desired, initial = np.asarray(desired), np.asarray(initial)
    travelled = float(np.max(np.abs(desired - initial), initial=0.0))
    rounding = 2 * SAFETY * F32_UNIT_ROUNDOFF * float(np.max(np.abs(desired), initial=0.0))
    np.testing.assert_allclose(np.asarray(actual), desired, rtol=0,
                               atol=tol.rtol * travelled + rounding,
                               err_msg=f"{err_msg} (moved {travelled:.3g}; {tol.why})")


def assert_close(actual, desired, tol: Tolerance, err_msg: str = "") -> None:
    """``assert_allclose`` with ``tol``'s relative and scale-relative absolute terms."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(np.asarray(actual), desired, rtol=tol.rtol,
                               atol=tol.atol(desired), err_msg=f"{err_msg} ({tol.why})")


def assert_same_model(expected, actual, images, *, rtol: float, atol: float,
                      weights_atol: float | None = None) -> None:
    """Every weight (base and head), then the outputs of training=True and False calls.

    ``weights_atol`` is the absolute term for the weights (default: ``atol``).
    """
    assert [w.path for w in actual.weights] == [w.path for w in expected.weights]
    weights_atol = atol if weights_atol is None else weights_atol
    for a, b in zip(actual.weights, expected.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=weights_atol,
                                   err_msg=a.path)
    for training in (True, False):
        np.testing.assert_allclose(np.asarray(actual(images, training=training)),
                                   np.asarray(expected(images, training=training)),
                                   rtol=rtol, atol=atol, err_msg=f"training={training}")


# ---------------------------------------------------------------- the tolerances used
# VGG16 at 32x32 plus an 8-unit dense layer and the predictions (tests/test_features.py):
# 15 layers, largest dot product 3 x 3 x 512 = 4608 terms -> rtol 4.9e-4. Measured with
# 3 model seeds, batches of 2, 2, 1 against one of 5 (and 3 against 8): bit-identical on
# AVX-512; under ONEDNN_MAX_CPU_ISA=AVX2 up to 8.8e-7 apart, 2.1e-6 of the features'
# scale (0.41-0.46), 230x inside.
VGG16_FORWARD = reordered(terms=3 * 3 * 512, layers=15)
# Caffe-style preprocessing (channel flip, then subtract the ImageNet mean; the
# mean-subtracted values reach 0.004 while the inputs reach 255): 2 ops -> rtol 9.5e-7.
PREPROCESSING = elementwise(ops=2)
# The shipped MobileNetV3Small alpha=0.75 source backbone at 32x32 with its predictions
# layer (tests/test_distributed.py): 53 layers, largest dot product 432 terms -> 5.2e-4.
MOBILENETV3_FORWARD = reordered(terms=432, layers=53)
# Its training steps at a global batch of 16: the backward pass doubles the layers, and
# a weight gradient sums over batch x positions, 16 x 16 x 16 = 4096 terms after the
# stride-2 stem -> 3.2e-3 of each update. Measured one replica against two (each with
# half the batch) under ONEDNN_MAX_CPU_ISA=AVX2: at most 1.5e-8 apart, 1.2e-7 of the
# weights' scale; the losses 5.4e-8 apart.
MOBILENETV3_TRAINING = reordered(terms=16 * 16 * 16, layers=2 * 53)
# Resumed against uninterrupted runs: 4 epochs of 8 steps (500 images, batch 64) in
# tests/test_reliability.py, 3 in tests/test_cli.py -> rtol 1.5e-5. Measured: bit-identical
# in every tensor, natively (mixed_bfloat16) and under ONEDNN_MAX_CPU_ISA=AVX2 (float32).
RESUMED = resumed(steps=4 * 8)

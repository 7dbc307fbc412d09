"""Whether a mirror image is still the same task: the check behind ``--augment auto``.

Horizontal flips are in every transfer-learning recipe (fastai's ``aug_transforms``,
the Keras guide) because photographs of cats face either way. Many images do not:
digits, letters, documents, and catalogue shots whose shoes all point left. There a
flipped training image is an image the model will never be asked about, and for
digits it is a different or invalid glyph: on the transfer suite's digits tasks
(``benchmarks/transfer_suite.py``, validation only) flipping cost 6.6 points (T9) and
3.6 points (X2).

The check asks the training images themselves. Logistic regression on small grey
pixels is fitted on folds of the training set and scored on the held-out originals
and on their mirror images. If the data are mirror-symmetric (each orientation
occurs), the mirror images score nearly as well; if the data have a canonical
orientation, the score falls towards chance. Flips stay on when the check cannot
tell (pixels near chance, too few images, multi-label data): then the conventional
default stands. It costs seconds: at most :data:`MAX_IMAGES` images (a stratified
sample) at :data:`SIDE` pixels, five logistic regressions (0.2-1.6 s on the suite's
tasks, ~6 s on 1,800 ten-class images on busy cores).

Example:
    >>> from sklearn.datasets import load_digits
    >>> from kerastl.data.arrays import from_arrays
    >>> digits = load_digits()
    >>> mirror_check(from_arrays((digits.images[:300] * 15).astype("uint8"),
    ...                          digits.target[:300])).flip
    False
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..core.backend import single_threaded_blas
from .image_data import ImageData

SIDE = 32
MAX_IMAGES = 2000
# Chosen on the transfer suite's training images (cross-validation, no test images):
# the share of the pixel model's margin above chance that survives mirroring was
# 0.91-1.0 on the tasks whose classes occur in both orientations (tops, bags) and
# 0.33-0.70 on shoes and digits. Flipping helped neither of the latter on validation.
MIN_RETAINED = 0.8
# Below this accuracy above chance the pixel model says nothing about orientation.
MIN_SIGNAL = 0.1
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class MirrorCheck:
    """What the check measured, and its decision.

    Attributes:
        flip: bool. Whether horizontal flips suit the data.
        original: float or None. Cross-validated pixel accuracy on held-out images.
        mirrored: float or None. The same models on the mirror images of those images.
        chance: float or None. The accuracy of always answering the largest class.
        reason: str. One line for the plan.

    Example:
        >>> round(MirrorCheck(True, 0.9, 0.85, 0.2, "flips kept").retained, 3)
        0.929
    """

    flip: bool
    original: float | None
    mirrored: float | None
    chance: float | None
    reason: str

    @property
    def retained(self) -> float | None:
        """Share of the margin above chance that survives mirroring (1: symmetric)."""
        if None in (self.original, self.mirrored, self.chance) or self.original <= self.chance:
            return None
        share = (self.mirrored - self.chance) / (self.original - self.chance)
        return min(1.0, max(0.0, share))  # above 1: mirror images scored better, by chance


def mirror_check(data: ImageData, *, seed: int = 0) -> MirrorCheck:
    """Decide whether horizontal flips suit ``data`` (see the module docstring).

    Args:
        data: ImageData. The training images.
        seed: int. Seeds the subsample and the folds.

    Returns:
        A :class:`MirrorCheck`.

    Example:
        >>> import numpy as np
        >>> from kerastl.data.arrays import from_arrays
        >>> rng = np.random.default_rng(0)
        >>> left = np.zeros((40, 16, 16), "uint8"); left[:, :, :4] = 200  # a bar on the left
        >>> noise = rng.integers(0, 50, (80, 16, 16)).astype("uint8")
        >>> images = np.concatenate([left, left[:, :, ::-1]]) + noise  # class 1: on the right
        >>> check = mirror_check(from_arrays(images, [0] * 40 + [1] * 40))
        >>> check.flip, round(check.retained, 1)
        (False, 0.0)
    """
    if data.multilabel:
        return MirrorCheck(True, None, None, None, "multi-label data are not checked")
    every_label = np.asarray(data.labels)
    keep = _stratified_sample(every_label, MAX_IMAGES, seed)
    # Classes too small to hold out are left out of the check, not out of training.
    keep = keep[np.bincount(every_label[keep])[every_label[keep]] >= MIN_PER_CLASS]
    labels = every_label[keep]
    if len(np.unique(labels)) < 2:
        return MirrorCheck(True, None, None, None, f"too few images to check: fewer than two "
                           f"classes have {MIN_PER_CLASS} or more")
    pixels = _grey_pixels(data.subset(keep))
    original, mirrored = _cross_validated(pixels, labels, seed)
    chance = float(np.bincount(labels).max() / len(labels))
    facts = (f"pixel model on {len(labels)} training images: {original:.2f} on held-out "
             f"images, {mirrored:.2f} on their mirror images, chance {chance:.2f}")
    if original - chance < MIN_SIGNAL:
        return MirrorCheck(True, original, mirrored, chance,
                           f"flips kept: the {facts} says nothing about orientation")
    check = MirrorCheck(True, original, mirrored, chance, "")
    flip = check.retained >= MIN_RETAINED
    verdict = ("flips kept: mirror images look like the data" if flip else
               "no flips: the images have a left and a right (pass --augment flip,translate "
               "to flip anyway)")
    return MirrorCheck(flip, original, mirrored, chance, f"{verdict}; {facts}")


def _stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` images, every class in proportion (at least
    :data:`MIN_PER_CLASS` where it has them), sorted."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        share = max(MIN_PER_CLASS, round(limit * len(members) / len(labels)))
        keep.append(members[:share])
    return np.sort(np.concatenate(keep))


def _grey_pixels(data: ImageData) -> np.ndarray:
    rows = [np.asarray(x).mean(axis=-1) for x, _ in data.batches(SIDE, 256)]
    return np.concatenate(rows) / 255.0


def _cross_validated(pixels: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    flat, mirrored = pixels.reshape(len(pixels), -1), pixels[:, :, ::-1].reshape(len(pixels), -1)
    smallest = np.unique(labels, return_counts=True)[1].min()
    folds = StratifiedKFold(int(min(5, smallest)), shuffle=True, random_state=seed)
    scores = []
    with single_threaded_blas(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence on tiny folds
        for train, held_out in folds.split(flat, labels):
            model = LogisticRegression(max_iter=1000).fit(flat[train], labels[train])
            scores.append((model.score(flat[held_out], labels[held_out]),
                           model.score(mirrored[held_out], labels[held_out])))
    original, flipped = np.mean(scores, axis=0)
    return float(original), float(flipped)


def resolve_augment(augment: list[str], data: ImageData, *,
                    seed: int = 0) -> tuple[list[str], str | None]:
    """``augment`` with ``"auto"`` replaced by what :func:`mirror_check` decides.

    Args:
        augment: list of str. A run's ``augment`` (``["auto"]`` or explicit names).
        data: ImageData. The training images.
        seed: int. Seeds the check.

    Returns:
        ``(augmentations, reason)``; reason is None when nothing was decided.

    Example:
        >>> resolve_augment(["translate"], None)
        (['translate'], None)
    """
    if list(augment) != ["auto"]:  # resolve_config made it a list
        return list(augment), None
    check = mirror_check(data, seed=seed)
    chosen = ["flip", "translate"] if check.flip else ["translate"]
    return chosen, f"--augment auto: {','.join(chosen)} ({check.reason})"

"""Random augmentation layers for training batches of pixels in [0, 255]."""

from __future__ import annotations

from collections.abc import Sequence

import keras  # noqa: E402  (after the backend is pinned)

from ..config.choices import AUGMENTATIONS
from ..core import backend as _backend  # noqa: F401  (pins the TensorFlow backend)
from ..core.errors import ConfigError
from .decoding import (  # noqa: F401  (CHECK_FILES, DECODE_METHOD: re-exported)
    CHECK_FILES,
    DECODE_METHOD,
    check_files,
    decoded_memory_budget,
    file_pixels,
)

# Factor of each random augmentation: ±10% (of a full turn for rotation, of the size
# for zoom, of the contrast), the values of the Keras transfer-learning guide.
AUGMENTATION_FACTOR = 0.1


def augmentation(
    names: Sequence[str] | str = AUGMENTATIONS, seed: int | None = None
) -> keras.Sequential | None:
    """Random augmentation layers for training batches of pixels in ``[0, 255]``.

    Args:
        names: sequence of str, or a comma-separated str. Any of ``"flip"``
            (horizontal), ``"rotation"``, ``"zoom"``, ``"contrast"``, ``"translate"``,
            each by ±10%. Defaults to all five.
        seed: int or None. Seed of the random layers.

    Returns:
        A ``keras.Sequential`` named ``"augmentation"``, or None when ``names`` is empty.

    Raises:
        ConfigError: an unknown name.

    Example:
        >>> [layer.name for layer in augmentation("flip,zoom").layers]
        ['flip', 'zoom']
    """
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"Unknown augmentation(s) {unknown}; choose from {list(AUGMENTATIONS)}.")
    if not names:
        return None
    return keras.Sequential(
        [_augmentation_layer(name, _offset(seed, i)) for i, name in enumerate(names)],
        name="augmentation",
    )


def _offset(seed: int | None, index: int) -> int | None:
    # Distinct seeds per layer: equal seeds would correlate flips with rotations.
    return None if seed is None else seed + index


def _augmentation_layer(name: str, seed: int | None) -> keras.layers.Layer:
    layers = keras.layers
    if name == "flip":
        return layers.RandomFlip("horizontal", seed=seed, name=name)
    if name == "rotation":
        return layers.RandomRotation(AUGMENTATION_FACTOR, seed=seed, name=name)
    if name == "zoom":
        return layers.RandomZoom(AUGMENTATION_FACTOR, seed=seed, name=name)
    if name == "translate":
        return layers.RandomTranslation(AUGMENTATION_FACTOR, AUGMENTATION_FACTOR, seed=seed,
                                        name=name)
    return layers.RandomContrast(AUGMENTATION_FACTOR, seed=seed, name=name)

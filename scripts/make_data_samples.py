"""Write the shipped ``data_samples/fashion`` image folders from real Fashion-MNIST.

Takes the five *target* classes of the transfer study (5-9: sandal, shirt, sneaker,
bag, ankle_boot) and writes 28x28 grayscale PNGs::

    data_samples/fashion/{train,val,test}/<class>/<index>.png

``<index>`` is the image's index in the official Fashion-MNIST split it came from
(train and val from the official training split, test from the official test
split), so every sample can be traced back. The draw is seeded: running the command
again writes the same files.

Run from the repository root (needs ``apt-get install dataset-fashion-mnist`` or
``$KERASTL_FASHION_MNIST``; takes a few seconds)::

    python scripts/make_data_samples.py

Example:
    python scripts/make_data_samples.py --train 10 --val 5 --test 5 --out runs/samples_smoke
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from kerastl.data.datasets import FASHION_MNIST_CLASSES, fashion_mnist

TARGET_CLASSES = (5, 6, 7, 8, 9)
REPO = Path(__file__).resolve().parents[1]


def draw_indices(
    labels: np.ndarray, per_class: list[int], seed: int
) -> list[dict[int, np.ndarray]]:
    """Disjoint, seeded, sorted index draws per class for consecutive splits.

    Args:
        labels: np.ndarray. Original class ids of one official split.
        per_class: list of int. Images per class for each split drawn from it.
        seed: int. Seed of the draw.

    Returns:
        One ``{class id: sorted indices}`` dict per entry of ``per_class``.

    Example:
        >>> parts = draw_indices(np.array([5, 5, 6, 6, 5]), [1, 1], seed=0)
        >>> [len(p[5]) for p in parts]
        [1, 1]
    """
    rng = np.random.default_rng(seed)
    splits: list[dict[int, np.ndarray]] = [{} for _ in per_class]
    for class_id in np.unique(labels):
        chosen = rng.permutation(np.flatnonzero(labels == class_id))
        start = 0
        for split, count in zip(splits, per_class, strict=True):
            split[int(class_id)] = np.sort(chosen[start : start + count])
            start += count
    return splits


def write_split(out: Path, images: np.ndarray, indices: dict[int, np.ndarray]) -> int:
    """Write ``indices`` of ``images`` as PNGs under ``out/<class>/``; return the count."""
    written = 0
    for class_id, chosen in indices.items():
        folder = out / FASHION_MNIST_CLASSES[class_id]
        folder.mkdir(parents=True, exist_ok=True)
        for index in chosen:
            Image.fromarray(images[index]).save(folder / f"{index}.png", optimize=True)
            written += 1
    return written


def _target_only(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Keep original indices and labels: file names must point into the official split.
    mask = np.isin(labels, TARGET_CLASSES)
    return images, np.where(mask, labels, -1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=100, help="train images per class")
    parser.add_argument("--val", type=int, default=30, help="val images per class")
    parser.add_argument("--test", type=int, default=60, help="test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "data_samples" / "fashion"))
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test), _ = fashion_mnist()
    x_train, y_train = _target_only(x_train, y_train)
    x_test, y_test = _target_only(x_test, y_test)
    train, val = draw_indices(y_train, [args.train, args.val], seed=args.seed)
    (test,) = draw_indices(y_test, [args.test], seed=args.seed + 1)
    for split in (train, val, test):
        split.pop(-1, None)  # the non-target classes

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # a rerun must not leave files of an older draw behind
    for name, images, indices in (("train", x_train, train), ("val", x_train, val),
                                  ("test", x_test, test)):
        count = write_split(out / name, images, indices)
        print(f"{name}: {count} images in {out / name}")


if __name__ == "__main__":
    main()

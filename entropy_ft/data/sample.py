"""The profiling sample: a seeded, class-stratified subset of a split, held on the device.

The profile step measures entropy on a few hundred images; which ones must not decide the
result by chance, so the subset keeps the split's class mix and depends only on the seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from entropy_ft.data.loader import ParquetImages, to_model_input
from entropy_ft.logs import progress


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` row indices drawn per class in proportion to the class sizes (largest remainder), sorted.

    Keeps the class mix of the split, so a rare class is not left out of the profile by
    chance; all rows when ``n`` covers the split.
    """
    if n >= len(labels):
        return np.arange(len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    exact = n * sizes / sizes.sum()
    quota = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def batch_order(indices: np.ndarray, seed: int) -> np.ndarray:
    """``indices`` in a seeded random order, so that consecutive batches are random groups of the sample.

    Datasets store their rows class by class, so in row order every profiling batch would hold
    one class: the spread of batch entropies would be the spread between classes, and a
    bootstrap over batches (:mod:`entropy_ft.selection.entropy`) would resample the class mix
    that the stratified sample fixes. The generator is seeded by (seed, 1), a stream apart from
    the one :func:`stratified_indices` draws the sample with.
    """
    return np.random.default_rng((seed, 1)).permutation(indices)


class ModelInputs:
    """Re-iterable batches of normalised model input from a uint8 image tensor on the device."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.images = images
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            yield to_model_input(self.images[start : start + self.batch_size], self.images.device)


def load_images(ds: ParquetImages, indices: np.ndarray) -> torch.Tensor:
    """The chosen rows of a split as one uint8 Nx3xHxW tensor."""
    rows = progress(indices, desc="loading images", total=len(indices), unit="img")
    return torch.stack([ds.pixels(int(i)) for i in rows])

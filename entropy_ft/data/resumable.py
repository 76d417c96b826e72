"""A training loader whose every random choice is a function of (seed, epoch, position), so a run
resumed from a checkpoint, even one taken in the middle of an epoch, sees the same batches
and the same augmentations as an uninterrupted run.

The shuffle order and one augmentation seed per sample come from a generator seeded with
``seed * 1000 + epoch`` in the main process; each worker (or the main process when
``num_workers`` is 0) augments a sample under its own seed. Nothing depends on worker RNG
state, so the result is also the same for any ``num_workers`` and with persistent workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from entropy_ft.data.loader import ParquetImages, train_augmentation


def epoch_seed(seed: int, epoch: int) -> int:
    """The one number that fixes every random draw of an epoch."""
    return seed * 1000 + epoch


def train_noise(seed: int, epoch: int, batch: int, size: int, sigma_max: float,
                probability: float, fixed: bool = False) -> tuple[torch.Tensor, torch.Generator]:
    """Per-image Gaussian noise levels for one training batch, and the generator to draw the noise with.

    Each image gets, with ``probability``, sigma ~ U(0, ``sigma_max``), or exactly ``sigma_max``
    when ``fixed`` (the same-sigma ablation: train at the sigma the test adds), and no noise
    otherwise (pixels in [0, 1], clipped after, as the noise evaluation does). Both are a function of
    (seed, epoch, batch position), so a resumed run draws exactly what an uninterrupted one would."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch) * 100_003 + batch)
    sigmas = torch.full((size,), float(sigma_max)) if fixed else torch.rand(size, generator=g) * sigma_max
    return sigmas * (torch.rand(size, generator=g) < probability), g


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation_seed)`` in a seeded per-epoch order, starting at ``start``."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch ``epoch``'s order; skip its first ``start`` samples (already trained on before a resume)."""
        self.epoch = epoch
        self.start = start

    def plan(self) -> tuple[list[int], list[int], torch.Generator]:
        """The whole epoch's order and per-sample augmentation seeds, and the generator that drew them, left
        where they end: the device path continues it for its augmentation parameters
        (:meth:`entropy_ft.data.on_device.TrainBatches.plan`), a stream apart from the order's yet a
        function of (seed, epoch) alone."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=g).tolist()
        return order, seeds, g

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds, _ = self.plan()
        return iter(list(zip(order, seeds))[self.start :])

    def __len__(self) -> int:
        return self.size - self.start


class SeededAugment(Dataset):
    """Augments sample ``index`` under ``augmentation_seed`` without touching the caller's RNG."""

    def __init__(self, images: ParquetImages, transform=None) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        if self.transform is None:
            return self.images.pixels(index), int(self.images.labels[index])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = self.images.augmented(index, self.transform)
        return img, int(self.images.labels[index])


def make_train_loader(
    root: str | Path,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    image_size: int | None = None,
    augment: bool = True,
) -> tuple[DataLoader, EpochSampler]:
    """The training loader and its sampler (call ``sampler.set_epoch`` before each epoch)."""
    images = ParquetImages(root, "train", image_size=image_size)
    dataset = SeededAugment(images, train_augmentation() if augment else None)
    sampler = EpochSampler(len(images), seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # the loader draws a worker base seed per epoch; from its own generator, not the global
        # RNG, so that a mid-epoch resume sees the same global RNG stream (dropout) as the original
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler

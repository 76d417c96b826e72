"""The device data path: a split uploaded once as uint8 and batched, shuffled and augmented on the
device, with no DataLoader workers.

Why: on a GPU the loader path (Parquet rows -> Pillow augmentation one image at a time in worker
processes -> a host-to-device copy per batch) sets the pace, not the model. The Kaggle set at
224 px is about 360 MB as uint8 planes (one per grayscale image, three per colour one:
:meth:`~entropy_ft.data.loader.ParquetImages.planes`), little next to a GPU's memory, so it goes
up once; a batch is then one index gather on the device, and its augmentation one batched
``affine_grid``/``grid_sample`` and two elementwise operations, with per-image parameters.

Exactness: the order is :class:`~entropy_ft.data.resumable.EpochSampler`'s, the loader path's
for the same seed; the augmentation parameters of the image at position p of an epoch are row p
of a table drawn on the CPU by the generator that drew the order, continued. A batch is therefore
a function of (seed, epoch, position) on any device, and a run resumed at a batch boundary sees
what an uninterrupted one saw. Without augmentation a batch is pixel for pixel the loader path's.

Where the split lives: on the device when its planes take at most ``RESIDENT_FRACTION`` of the
device's free memory (on the CPU always: the host holds the split for either path). A larger split stays in
host memory and goes up batch by batch (gathered, pinned, copied asynchronously) in the same order,
so the batches never depend on how much memory the device has, as shard-by-shard shuffling would
make them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from entropy_ft.data.loader import (
    JITTER,
    ROTATION_DEGREES,
    SCALE,
    TRANSLATE,
    LoaderConfig,
    ParquetImages,
    data_loader,
)
from entropy_ft.data.resumable import EpochSampler

DATA_PATHS = ("auto", "device", "loader")
# The CPU's choice, measured on the 2-core AMD EPYC development machine (one torch thread, load average
# about 5 from other work): whole fine-tuning epochs (benchmarks/perf.py --only floor: resnet18, full, bf16,
# 96 px) ran at 52.0 images/s on the device path and 49.3 on the loader path, the device path the faster in
# each of 5 alternated rounds; the data alone (the Kaggle training split at 96 px, no model) took 0.55 ms an
# image against 1.42 ms. See docs/finetune.md.
CPU_DATA_PATH = "device"
RESIDENT_FRACTION = 0.25  # of the free device memory: the rest is left to activations, gradients and optimizer state
AUGMENT_DRAWS = 7  # uniforms per image: flip, angle, shift x, shift y, zoom, brightness, contrast
LUMA = (0.2989, 0.587, 0.114)  # the grayscale weights ColorJitter's contrast uses for a colour image


def resolve_data_path(name: str, device: torch.device) -> str:
    """``auto``: the device path on a GPU; on the CPU ``CPU_DATA_PATH``, the faster of the two as measured."""
    if name != "auto":
        return name
    return "device" if device.type == "cuda" else CPU_DATA_PATH


def fits(shape: tuple[int, ...], device: torch.device) -> bool:
    """Whether a uint8 tensor of ``shape`` may live on ``device``: always on the CPU, where the host holds
    the split for either path; on a GPU when it takes at most ``RESIDENT_FRACTION`` of the free memory."""
    if device.type != "cuda":
        return True
    return math.prod(shape) <= RESIDENT_FRACTION * torch.cuda.mem_get_info(device)[0]


def augment_batch(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Training augmentation of float B x C x H x W images on [0, 1], one parameter set per image from the
    uniforms ``u`` (B x ``AUGMENT_DRAWS``, on ``x``'s device), with the Pillow path's ranges
    (:func:`entropy_ft.data.loader.train_augmentation`).

    Flip (probability 1/2), rotation, shift and zoom are one inverse mapping sampled by ``grid_sample``
    (bilinear, black outside the image, as ``RandomAffine`` fills); then brightness (x b) and contrast
    (c x + (1 - c) mean grayscale), each clipped to [0, 1] as ``ColorJitter`` does. ColorJitter draws the
    order of the two; here brightness always comes first. Shifts are continuous, not whole pixels.
    """
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    angle = torch.deg2rad((2 * u[:, 1] - 1) * ROTATION_DEGREES)
    shift = (2 * u[:, 2:4] - 1) * (2 * TRANSLATE)  # grid coordinates run from -1 to 1: 2 per side
    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 4]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # the output point p shows the input point Flip R(-angle) (p - shift) / zoom: the inverse of flipping,
    # then rotating, zooming and shifting (a square image, so grid coordinates are isotropic)
    linear = torch.stack([torch.stack([flip * cos, flip * sin], 1), torch.stack([-sin, cos], 1)], 1)
    theta = torch.cat([linear, -(linear @ shift.unsqueeze(2))], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = (1 + (2 * u[:, 5] - 1) * JITTER).view(-1, 1, 1, 1)
    contrast = (1 + (2 * u[:, 6] - 1) * JITTER).view(-1, 1, 1, 1)
    x = (x * brightness).clamp_(0.0, 1.0)
    gray = x if x.shape[1] == 1 else sum(w * x[:, c : c + 1] for c, w in enumerate(LUMA))
    return (contrast * x + (1 - contrast) * gray.mean((1, 2, 3), keepdim=True)).clamp_(0.0, 1.0)


def to_rgb_batch(x: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W -> B x 3 x H x W as a view (the channel copied), as the loader path replicates grayscale."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class DeviceSplit:
    """One split's planes and plane index (:meth:`ParquetImages.planes`) on ``device`` when they :func:`fit
    <fits>`, else in host memory, a batch's planes uploaded from pinned memory; labels always on ``device``."""

    def __init__(self, images: ParquetImages, device: torch.device) -> None:
        self.device = device
        self.resident = fits(images.plane_shape(), device)
        planes, index = images.planes()
        self.store = planes.to(device) if self.resident else planes
        self.index = index.to(self.store.device)
        self.labels = torch.from_numpy(images.labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Rows ``index`` (a slice, or a tensor on ``store``'s device) as uint8 B x C x H x W on the device:
        C = 3 when the split has colour rows (grayscale ones copied), else 1."""
        batch = self.store[self.index[index]]
        return batch if self.resident else batch.pin_memory().to(self.device, non_blocking=True)


SplitKey = tuple[str, str, int | None, str, int]
_RESIDENT: OrderedDict[SplitKey, tuple[ParquetImages, DeviceSplit]] = OrderedDict()
RESIDENT_SPLITS = 3  # train, val and test of one dataset: what a run, or a grid of runs on one dataset, reads


def _split_key(root: str | Path, split: str, image_size: int | None, device: torch.device) -> SplitKey:
    """A split read at a size onto a device, as of the dataset's manifest (a re-ingest there is another key)."""
    manifest = Path(root) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0
    return str(Path(root).resolve()), split, image_size, str(device), stamp


def resident_split(root: str | Path, split: str, image_size: int | None,
                   device: torch.device) -> tuple[ParquetImages, DeviceSplit]:
    """The split's rows and its :class:`DeviceSplit`, read and uploaded once per process: runs that follow
    one another on the same dataset and device (fine-tuning, validation, evaluation, a benchmark's grid)
    share one copy. The newest ``RESIDENT_SPLITS`` are kept; a split is read-only once uploaded."""
    key = _split_key(root, split, image_size, device)
    if cached := _cached(key):
        return cached
    images = ParquetImages(root, split, image_size=image_size)
    return _remember(key, images, DeviceSplit(images, device))


def _cached(key: SplitKey) -> tuple[ParquetImages, DeviceSplit] | None:
    """The kept split for ``key``, now the newest, or None."""
    if key not in _RESIDENT:
        return None
    _RESIDENT.move_to_end(key)
    return _RESIDENT[key]


def _remember(key: SplitKey, images: ParquetImages, split: DeviceSplit) -> tuple[ParquetImages, DeviceSplit]:
    _RESIDENT[key] = (images, split)
    while len(_RESIDENT) > RESIDENT_SPLITS:
        _RESIDENT.popitem(last=False)
    return images, split


class TrainBatches:
    """The training split's batches on the device, in :class:`EpochSampler` order: float B x 3 x H x W on
    [0, 1] when augmented (:func:`augment_batch`), else uint8, with labels on the device.

    Stands in for the loader path's DataLoader: ``len()`` is batches per epoch, and ``sampler.set_epoch(
    epoch, start)`` picks the epoch and the sample to resume at (a batch boundary)."""

    def __init__(self, split: DeviceSplit, batch_size: int, seed: int, augment: bool) -> None:
        self.split = split
        self.batch_size = batch_size
        self.augment = augment
        self.sampler = EpochSampler(len(split), seed)

    def __len__(self) -> int:
        return math.ceil(self.sampler.size / self.batch_size)

    def plan(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The epoch's whole order and, when augmenting, its augmentation draws (row p: the image at position p),
        on the CPU."""
        order, _, generator = self.sampler.plan()
        draws = torch.rand((self.sampler.size, AUGMENT_DRAWS), generator=generator) if self.augment else None
        return torch.tensor(order), draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, draws = self.plan()
        on_store, on_device = order.to(self.split.store.device), order.to(self.split.device)
        if draws is not None:
            draws = draws.to(self.split.device)
        for k in range(self.sampler.start, self.sampler.size, self.batch_size):
            x = self.split.rows(on_store[k : k + self.batch_size])
            if draws is not None:
                x = augment_batch(x.float().div_(255.0), draws[k : k + self.batch_size])
            yield to_rgb_batch(x), self.split.labels[on_device[k : k + self.batch_size]]


def train_batches(root: str | Path, batch_size: int, seed: int, device: torch.device, image_size: int | None = None,
                  augment: bool = True) -> tuple[TrainBatches, EpochSampler]:
    """The device path's training batches and their sampler, shaped like
    :func:`entropy_ft.data.resumable.make_train_loader`'s pair."""
    batches = TrainBatches(resident_split(root, "train", image_size, device)[1], batch_size, seed, augment)
    return batches, batches.sampler


class SplitBatches:
    """A resident split in order as (uint8 B x 3 x H x W on the device, labels on the CPU): what
    :func:`entropy_ft.evaluation.noise.predict` reads from an unshuffled DataLoader, without per-image work.
    ``dataset`` is the split read, as a DataLoader's is."""

    def __init__(self, images: ParquetImages, split: DeviceSplit, batch_size: int) -> None:
        self.dataset = images
        self.batch_size = batch_size
        self.split = split
        self.labels = torch.from_numpy(images.labels)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(0, len(self.labels), self.batch_size):
            yield to_rgb_batch(self.split.rows(slice(k, k + self.batch_size))), self.labels[k : k + self.batch_size]


def eval_batches(root: str | Path, split: str, cfg: LoaderConfig, device: torch.device):
    """One split in order for prediction: resident on ``device`` where it :func:`fits` (on the CPU always),
    else the DataLoader with ``cfg.num_workers`` workers. Either gives the same pixels in the same order."""
    key = _split_key(root, split, cfg.image_size, device)
    if cached := _cached(key):
        return SplitBatches(*cached, cfg.batch_size)
    images = ParquetImages(root, split, image_size=cfg.image_size)
    if fits(images.plane_shape(), device):
        return SplitBatches(*_remember(key, images, DeviceSplit(images, device)), cfg.batch_size)
    return data_loader(images, cfg, shuffle=False)

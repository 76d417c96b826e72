"""Feed a Dataset artifact to a model: Parquet rows -> uint8 tensors in DataLoader workers
-> normalised batches on the device.

Workers only slice raw pixels out of one shared Arrow buffer and augment them as uint8
Pillow images, on the stored channels (one for a grayscale scan); conversion to float,
optional Gaussian noise and ImageNet normalisation run on whole batches on the device
(:func:`to_model_input`), where they are cheapest. The other way in, the whole split held
on the device and augmented there per batch, is :mod:`entropy_ft.data.on_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from entropy_ft.data.format import read_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The training augmentation's ranges, shared by the Pillow path (train_augmentation) and the
# device path (entropy_ft.data.on_device.augment_batch), so both draw from the same distribution.
ROTATION_DEGREES = 10.0  # rotation ~ U(-10, 10) degrees
TRANSLATE = 0.05  # shift ~ U(-5%, 5%) of the side, each axis
SCALE = (0.92, 1.08)  # zoom ~ U(0.92, 1.08)
JITTER = 0.15  # brightness and contrast factors ~ U(0.85, 1.15)


class ParquetImages(Dataset):
    """One split of a Dataset artifact as ``(uint8 tensor 3xHxW, label)`` pairs.

    Grayscale rows are replicated to 3 channels here, at load time, but only
    after ``transform`` (if any) has run on the stored channels: augmenting one channel and
    copying it is the same image as augmenting three equal channels, at a third of the work.
    """

    def __init__(self, root: str | Path, split: str, transform=None, image_size: int | None = None) -> None:
        table = read_split(root, split, columns=["image", "height", "width", "channels", "label"])
        images = table.column("image").combine_chunks()
        # Arrow binary array: buffers() = [validity, int32 offsets, data]; slice rows without copying
        offsets = np.frombuffer(images.buffers()[1], dtype=np.int32)
        self._offsets = offsets[images.offset : images.offset + len(images) + 1]
        self._data = np.frombuffer(images.buffers()[2], dtype=np.uint8) if len(images) else np.empty(0, np.uint8)
        self._shape = np.stack(
            [table.column(c).to_numpy() for c in ("height", "width", "channels")], axis=1
        ).astype(np.int64) if len(table) else np.empty((0, 3), np.int64)
        self.labels = table.column("label").to_numpy().astype(np.int64)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.labels)

    def stored(self, i: int) -> torch.Tensor:
        """Row ``i`` as stored (uint8 CxHxW, C = 1 or 3), resized to ``image_size`` if set."""
        h, w, c = self._shape[i]
        raw = self._data[self._offsets[i] : self._offsets[i + 1]]
        img = torch.from_numpy(raw.copy()).view(h, w, c).permute(2, 0, 1).contiguous()
        if self.image_size and (h != self.image_size or w != self.image_size):
            from torchvision.transforms.v2 import functional as F

            img = F.resize(img, [self.image_size, self.image_size], antialias=True)
        return img

    def plane_shape(self) -> tuple[int, int, int]:
        """``(P, H, W)`` of :meth:`planes`: P is the number of stored channels over all rows."""
        if not len(self):
            return 0, 0, 0
        h, w = (self.image_size, self.image_size) if self.image_size else self._shape[0, :2]
        return int(self._shape[:, 2].sum()), int(h), int(w)

    def planes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored channel of the split as one uint8 P x H x W tensor of planes, and which planes make
        row i: ``index[i]`` (N x C, C = 3 when any row is colour, else 1; a grayscale row names its one plane
        C times). ``planes[index]`` is a batch pixel for pixel as :meth:`stored` gives it (grayscale copied
        when C is 3): the device path's upload.

        Planes rather than N x H x W x 3 because a split is mostly grayscale (Kaggle: 106 colour images in
        7,019), which keeps the split a third of the size. Rows of one split share the ingest size, so an
        all-grayscale split is one copy of the Arrow buffer; a resize to ``image_size`` runs once here, in
        chunks of planes, not per epoch."""
        n = len(self)
        channels = self._shape[:, 2]
        first = np.concatenate([[0], np.cumsum(channels)[:-1]]).astype(np.int64)
        width = 3 if n and channels.max() == 3 else 1
        index = torch.from_numpy(first[:, None] + (channels[:, None] == 3) * np.arange(width))
        if n == 0:
            return torch.empty((0, 0, 0), dtype=torch.uint8), index
        h, w = (int(v) for v in self._shape[0, :2])
        if width == 1:
            planes = self._data[self._offsets[0] : self._offsets[n]].reshape(n, h, w).copy()
        else:
            planes = np.empty((int(channels.sum()), h, w), np.uint8)
            for i in range(n):  # a colour row is stored H x W x 3: its planes are its channels
                planes[first[i] : first[i] + channels[i]] = np.moveaxis(
                    self._data[self._offsets[i] : self._offsets[i + 1]].reshape(h, w, -1), 2, 0)
        planes = torch.from_numpy(planes)
        side = self.image_size
        if not side or (h, w) == (side, side):
            return planes, index
        from torchvision.transforms.v2 import functional as F

        out = torch.empty((len(planes), side, side), dtype=torch.uint8)
        for k in range(0, len(planes), 256):  # antialiased as stored() resizes; channels resize independently
            out[k : k + 256] = F.resize(planes[k : k + 256, None], [side, side], antialias=True)[:, 0]
        return out, index

    def pixels(self, i: int) -> torch.Tensor:
        """Row ``i`` as the model sees it without augmentation: uint8 3xHxW."""
        return to_rgb(self.stored(i))

    def augmented(self, i: int, transform) -> torch.Tensor:
        """Row ``i`` through ``transform`` (on its stored channels), then as uint8 3xHxW."""
        return to_rgb(augment(self.stored(i), transform))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.pixels(i) if self.transform is None else self.augmented(i, self.transform)
        return img, int(self.labels[i])


def to_rgb(img: torch.Tensor) -> torch.Tensor:
    """uint8 1xHxW or 3xHxW -> contiguous 3xHxW (a grayscale channel copied three times)."""
    return img.expand(3, *img.shape[1:]).contiguous() if img.shape[0] == 1 else img


def augment(img: torch.Tensor, transform) -> torch.Tensor:
    """Run a torchvision transform on a uint8 CxHxW image as a Pillow image (mode L or RGB).

    torchvision's tensor kernels warp through a float ``grid_sample`` per image (about 0.8 ms
    for one 224 px channel, 1.1 ms for three); Pillow's uint8 affine and colour operations
    give the same transform in about 0.3 ms, which is what lets the training loader keep
    ahead of the model on a CPU. Random parameters are drawn from torch's RNG either way.
    """
    from PIL import Image

    hwc = img.permute(1, 2, 0).numpy()
    out = np.asarray(transform(Image.fromarray(hwc[:, :, 0] if img.shape[0] == 1 else hwc)))
    return torch.from_numpy(out.copy()).view(out.shape[0], out.shape[1], -1).permute(2, 0, 1).contiguous()


def train_augmentation():
    """Light augmentation for axial MRI: small rotations, shifts and zoom, left-right flips
    (anatomy is near-symmetric), mild brightness/contrast change between scanners. No
    vertical flips or strong colour changes, which produce images no scanner makes."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=ROTATION_DEGREES, translate=(TRANSLATE, TRANSLATE), scale=SCALE),
            v2.ColorJitter(brightness=JITTER, contrast=JITTER),
        ]
    )


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 32
    num_workers: int = 0
    image_size: int | None = None  # resize on load when it differs from the dataset's
    seed: int = 0


def make_loader(root: str | Path, split: str, cfg: LoaderConfig, train: bool) -> DataLoader:
    """A DataLoader over one split: shuffled and augmented for training, in order otherwise."""
    ds = ParquetImages(root, split, transform=train_augmentation() if train else None, image_size=cfg.image_size)
    return data_loader(ds, cfg, train)


def data_loader(ds: ParquetImages, cfg: LoaderConfig, shuffle: bool) -> DataLoader:
    """The DataLoader over ``ds`` that :func:`make_loader` builds, for a caller that already has the split read."""
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=cfg.num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def to_model_input(
    batch: torch.Tensor,
    device: torch.device,
    channels_last: bool = True,
    noise_sigma: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 Bx3xHxW (or float already on [0, 1], as the device path's augmentation leaves it) -> float,
    optional Gaussian noise on [0, 1] pixels (clipped), ImageNet-normalised.

    ``noise_sigma`` is one sigma for the batch, or a (B,) tensor of one sigma per image."""
    x = batch.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    sigma = noise_sigma if isinstance(noise_sigma, torch.Tensor) else torch.tensor(float(noise_sigma))
    if bool((sigma > 0).any()):
        noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
        scale = sigma.to(x.device, torch.float32).view(-1, 1, 1, 1) if sigma.ndim else sigma.to(x.device)
        x = (x + noise.to(x.device) * scale).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x

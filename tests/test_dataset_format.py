"""The Dataset artifact: synthetic phantoms written as shards + manifest and read back."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from entropy_ft.data import synthetic
from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.data.loader import ParquetImages, to_model_input
from entropy_ft.errors import UserError
from entropy_ft.steps import ingest


def test_synthetic_dataset_manifest_matches_shards(synthetic_dataset):
    manifest = load_manifest(synthetic_dataset)
    assert manifest.classes == synthetic.CLASSES
    assert sum(manifest.totals.values()) == 160
    for split in ("train", "val", "test"):
        table = read_split(synthetic_dataset, split)
        assert len(table) == manifest.totals[split]
        for cls in synthetic.CLASSES:  # stratified: every class in every split
            assert manifest.counts[split][cls] > 0
    for shard in manifest.shards:
        data = (synthetic_dataset / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_synthetic_is_deterministic_and_shards_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        ingest.run(ingest.Config(sources=("synthetic:40",), out=str(out), image_size=32, seed=3))
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    c = tmp_path / "c"
    ingest.run(ingest.Config(sources=("synthetic:40",), out=str(c), image_size=32, seed=4))
    shards_a = json.loads((a / "manifest.json").read_text())["shards"]
    assert json.loads((c / "manifest.json").read_text())["shards"] != shards_a


def test_classes_differ_where_their_lesions_are():
    """Same anatomy, other class: the images differ only in a small lesion, placed by class."""
    size = 64
    for i in range(8):
        healthy = synthetic.phantom(i, synthetic.CLASSES.index("notumor"), size, seed=0).astype(int)
        for name in ("glioma", "meningioma", "pituitary"):
            img = synthetic.phantom(i, synthetic.CLASSES.index(name), size, seed=0).astype(int)
            changed = np.abs(img - healthy) > 20
            assert 0 < changed.mean() < 0.15, (name, changed.mean())
            ys, xs = np.nonzero(changed)
            if name == "pituitary":  # midline, lower half of the head
                assert abs(xs.mean() - size / 2) < size * 0.1 and ys.mean() > size / 2
            if name == "glioma":  # off the midline, in a hemisphere
                assert abs(xs.mean() - size / 2) > size * 0.08


def test_loader_replicates_gray_to_three_channels_and_normalises(synthetic_dataset):
    import torch

    ds = ParquetImages(synthetic_dataset, "train")
    img, label = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert 0 <= label < 4
    x = to_model_input(img[None], torch.device("cpu"))
    assert x.dtype == torch.float32 and x.shape == (1, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    noisy = to_model_input(img[None], torch.device("cpu"), noise_sigma=0.4, generator=g)
    assert not torch.equal(noisy, x)


def test_rejects_too_few_synthetic_images(tmp_path):
    with pytest.raises(UserError, match="at least 28"):
        ingest.run(ingest.Config(sources=("synthetic:10",), out=str(tmp_path / "x"), image_size=32))


def test_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        load_manifest(tmp_path)


def _real_mri(kaggle_zip, size: int = 96):
    """One real Kaggle MRI slice as a uint8 1xHxW tensor (grayscale, resized)."""
    import zipfile

    import torch
    from PIL import Image

    with zipfile.ZipFile(kaggle_zip) as zf:
        name = next(n for n in sorted(zf.namelist()) if n.startswith("Training/glioma/") and n.lower().endswith(".jpg"))
        with zf.open(name) as f:
            gray = Image.open(f).convert("L").resize((size, size))
    return torch.from_numpy(np.asarray(gray).copy())[None]


def test_augmenting_one_channel_is_augmenting_three_equal_channels(kaggle_zip):
    """The loader augments grayscale rows before copying them to 3 channels: same pixels, a third of the work."""
    import torch

    from entropy_ft.data.loader import augment, to_rgb, train_augmentation

    gray, aug = _real_mri(kaggle_zip), train_augmentation()
    for seed in range(8):
        torch.manual_seed(seed)
        one = augment(gray, aug)
        torch.manual_seed(seed)
        three = augment(to_rgb(gray), aug)
        assert one.shape == gray.shape and three.shape == (3, *gray.shape[1:])
        assert torch.equal(to_rgb(one), three), seed
        assert not torch.equal(one, gray)  # it did change the image


def test_pillow_augmentation_is_torchvisions_tensor_transform(kaggle_zip):
    """Same random parameters, same warp: Pillow and the tensor kernels differ only by rounding."""
    import torch

    from entropy_ft.data.loader import augment, train_augmentation

    gray, aug = _real_mri(kaggle_zip), train_augmentation()
    for seed in range(8):
        torch.manual_seed(seed)
        pillow = augment(gray, aug).int()
        torch.manual_seed(seed)
        tensor = aug(gray).int()
        diff = (pillow - tensor).abs()
        assert diff.float().mean() < 0.5, (seed, diff.float().mean())
        assert (diff > 16).float().mean() < 0.01, seed


def test_augmented_training_rows_are_three_channel_uint8(synthetic_dataset):
    import torch

    from entropy_ft.data.loader import train_augmentation

    ds = ParquetImages(synthetic_dataset, "train", transform=train_augmentation())
    torch.manual_seed(0)
    img, _ = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and img.is_contiguous()
    assert torch.equal(img[0], img[2])
    assert not torch.equal(img, ds.pixels(0))  # augmented, not the stored row

"""The device data path (entropy_ft.data.on_device): the loader path's pixels and order, per-image seeded
augmentation with the Pillow path's ranges, and exact resume of training on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imagefiles import phantom
from interruptions import Killed, StopAfter, kill_after_epoch
from PIL import Image
from selection_factory import CLASSES, selection_doc

from entropy_ft.data.format import read_split
from entropy_ft.data.loader import LoaderConfig, make_loader
from entropy_ft.data.on_device import (
    AUGMENT_DRAWS,
    RESIDENT_SPLITS,
    SplitBatches,
    augment_batch,
    eval_batches,
    resident_split,
    train_batches,
)
from entropy_ft.data.resumable import make_train_loader
from entropy_ft.model import factory as models
from entropy_ft.training.checkpoint import load_checkpoint
from entropy_ft.training.loop import TrainConfig, train
from entropy_ft.training.preemption import Preempted

CPU = torch.device("cpu")


def _equal_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == torch.uint8 and xa.shape == xb.shape
        assert torch.equal(xa, xb) and torch.equal(ya.cpu(), yb.cpu())


@pytest.mark.parametrize("image_size", [None, 24])
def test_without_augmentation_the_device_path_gives_the_loader_pixels_in_the_loader_order(synthetic_dataset,
                                                                                          image_size):
    """Training batches (same seed: same order, also resumed mid-epoch) and evaluation batches, at the stored
    size and resized."""
    loader, sampler = make_train_loader(synthetic_dataset, 16, 5, 0, image_size, augment=False)
    batches, device_sampler = train_batches(synthetic_dataset, 16, 5, CPU, image_size, augment=False)
    assert len(batches) == len(loader)
    for epoch, start in ((0, 0), (2, 32)):
        sampler.set_epoch(epoch, start)
        device_sampler.set_epoch(epoch, start)
        _equal_batches(loader, batches)
    cfg = LoaderConfig(batch_size=8, image_size=image_size)
    split = eval_batches(synthetic_dataset, "test", cfg, CPU)
    assert isinstance(split, SplitBatches)
    _equal_batches(make_loader(synthetic_dataset, "test", cfg, train=False), split)


def test_runs_in_one_process_share_one_upload_of_a_split_until_the_dataset_is_written_again(tmp_path):
    """A benchmark grid fine-tunes and evaluates many models on one dataset: train, val and test go up once."""
    from entropy_ft.steps import ingest

    out = tmp_path / "ds"
    ingest.run(ingest.Config(sources=("synthetic:48",), out=str(out), image_size=16, seed=0))
    train, _ = train_batches(out, 8, 0, CPU)
    assert train.split is train_batches(out, 8, 1, CPU)[0].split  # another run, another seed: the same upload
    test = eval_batches(out, "test", LoaderConfig(batch_size=8), CPU)
    assert test.split is eval_batches(out, "test", LoaderConfig(batch_size=4), CPU).split
    assert test.split is not eval_batches(out, "test", LoaderConfig(batch_size=8, image_size=8), CPU).split
    ingest.run(ingest.Config(sources=("synthetic:64",), out=str(out), image_size=16, seed=0))
    again = resident_split(out, "train", None, CPU)
    assert again[1] is not train.split and len(again[0]) > len(train.split)  # the new dataset, read afresh
    for size in range(1, RESIDENT_SPLITS + 2):  # bounded: the oldest split is let go
        resident_split(out, "val", size, CPU)
    assert resident_split(out, "train", None, CPU)[1] is not again[1]


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    """Every other image in colour (three different channels), the rest grayscale, at 32 px."""
    from entropy_ft.steps import ingest

    root = tmp_path_factory.mktemp("mixed")
    for i, cls in enumerate(CLASSES * 5):
        folder = root / "src" / ("Training" if i < 16 else "Testing") / cls
        folder.mkdir(parents=True, exist_ok=True)
        gray = phantom(i, cls, 40)
        Image.fromarray(np.stack([gray, gray // 2, 255 - gray], axis=2) if i % 2 else gray).save(folder / f"{i}.png")
    ingest.run(ingest.Config(sources=(str(root / "src"),), out=str(root / "ds"), image_size=32))
    return root / "ds"


@pytest.mark.parametrize("image_size", [None, 24])
def test_a_split_of_grayscale_and_colour_rows_is_one_plane_per_stored_channel_and_the_loader_pixels(mixed_dataset,
                                                                                                   image_size):
    channels = read_split(mixed_dataset, "train", columns=["channels"]).column("channels").to_pylist()
    assert set(channels) == {1, 3}
    cfg = LoaderConfig(batch_size=4, image_size=image_size)
    split = eval_batches(mixed_dataset, "train", cfg, CPU)
    assert len(split.split.store) == sum(channels) and split.split.index.shape == (len(channels), 3)
    _equal_batches(make_loader(mixed_dataset, "train", cfg, train=False), split)


def _draws(**values: float) -> torch.Tensor:
    """One row of uniforms; 0.5 is every parameter's identity, and a flip draw of 0.9 does not flip."""
    names = ("flip", "angle", "shift_x", "shift_y", "zoom", "brightness", "contrast")
    return torch.tensor([[values.get(n, 0.9 if n == "flip" else 0.5) for n in names]])


def test_augment_batch_applies_each_parameter_over_the_pillow_path_ranges():
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(augment_batch(x, _draws()), x, **close)
    torch.testing.assert_close(augment_batch(x, _draws(flip=0.1)), x.flip(3), **close)
    shifted = augment_batch(x, _draws(shift_x=1.0))  # the largest shift, 5% of 40 px: 2 px to the right
    torch.testing.assert_close(shifted[..., 2:], x[..., :-2], **close)
    assert shifted[..., :2].abs().max() < 1e-5  # black comes in, as RandomAffine fills
    torch.testing.assert_close(augment_batch(x, _draws(brightness=1.0)), (x * 1.15).clamp(0, 1), **close)
    torch.testing.assert_close(augment_batch(x, _draws(contrast=0.0)), 0.85 * x + 0.15 * x.mean(), **close)
    rgb = torch.cat([x, x.flip(2), 1 - x], 1)  # colour: the mean is of ColorJitter's grayscale
    gray = (0.2989 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).mean()
    torch.testing.assert_close(augment_batch(rgb, _draws(contrast=0.0)), 0.85 * rgb + 0.15 * gray, **close)
    for warp in ({"angle": 1.0}, {"zoom": 0.0}):  # 10 degrees, x 0.92: content moves, the centre stays
        out = augment_batch(x, _draws(**warp))
        assert (out - x).abs().max() > 0.05
        torch.testing.assert_close(out[..., 19:21, 19:21], x[..., 19:21, 19:21], atol=0.1, rtol=0)


def test_augmentation_is_per_image_and_a_function_of_seed_epoch_and_position(synthetic_dataset):
    x = torch.full((4, 1, 32, 32), 0.5)
    x[:, :, 8:20, 10:14] = 0.9
    draws = torch.rand(4, AUGMENT_DRAWS, generator=torch.Generator().manual_seed(1))
    out = augment_batch(x, draws)
    assert all(not torch.equal(out[i], out[j]) for i in range(4) for j in range(i))  # one image, own parameters
    torch.testing.assert_close(augment_batch(x[2:3], draws[2:3]), out[2:3], atol=1e-6, rtol=0)  # batch-independent

    def epoch(seed: int, number: int, augment: bool = True, start: int = 0):
        batches, sampler = train_batches(synthetic_dataset, 16, seed, CPU, augment=augment)
        sampler.set_epoch(number, start)
        return batches.plan()[1], [x for x, _ in batches]

    for number in (0, 1):  # batch k is its images augmented with the draws of its positions
        draws, augmented = epoch(3, number)
        _, plain = epoch(3, number, augment=False)
        for k, (got, raw) in enumerate(zip(augmented, plain, strict=True)):
            assert got.dtype == torch.float32 and got.shape == raw.shape
            expected = augment_batch(raw[:, :1].float() / 255, draws[16 * k : 16 * (k + 1)])
            assert torch.equal(got, expected.expand(-1, 3, -1, -1))
    draws, augmented = epoch(3, 0)
    again, replay = epoch(3, 0)
    assert torch.equal(draws, again) and all(torch.equal(a, b) for a, b in zip(augmented, replay, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(augmented[2:], epoch(3, 0, start=32)[1], strict=True))  # resumed
    assert not torch.equal(draws, epoch(3, 1)[0]) and not torch.equal(draws, epoch(4, 0)[0])


@pytest.mark.parametrize("data_path", ["device", "loader"])
def test_training_resumed_on_either_data_path_ends_with_bit_identical_weights(data_path, synthetic_dataset,
                                                                             tmp_path):
    """Two epochs with augmentation straight, against: preempted in the middle of epoch 1, resumed and killed
    after epoch 1, resumed for epoch 2."""
    sel = selection_doc("resnet18", "alternate")
    recipe = TrainConfig(epochs=2, batch_size=16, patience=2, precision="fp32", device="cpu", seed=7,
                         data_path=data_path)

    def run(**kwargs):
        torch.manual_seed(1)
        model, _ = models.build_model("resnet18", len(CLASSES), "none")
        return train(model, "resnet18", sel["trainable_modules"], synthetic_dataset, recipe, **kwargs)

    reference = run()
    assert reference.data_path == data_path
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Preempted):
        run(checkpoint_dir=ckpt, stop=StopAfter(3))
    assert load_checkpoint(ckpt, {})["batches_done"] == 3
    with pytest.raises(Killed):
        run(checkpoint_dir=ckpt, resume=True, on_epoch_end=kill_after_epoch(1))
    assert load_checkpoint(ckpt, {})["epoch"] == 1
    resumed = run(checkpoint_dir=ckpt, resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    ref_state, res_state = reference.model.state_dict(), resumed.model.state_dict()
    assert not [k for k in ref_state if not torch.equal(ref_state[k], res_state[k])]

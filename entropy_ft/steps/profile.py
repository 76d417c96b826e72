"""Profile the activation entropy of every backbone conv layer on a seeded subset of a dataset.

Writes ``profile.json`` (DESIGN section 3) and ``profile.html`` / ``profile.png`` (entropy
per layer) into ``--out``, a directory or ``s3://`` prefix.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import SCHEMA_VERSION, plots, storage
from ..data.format import SPLITS, load_manifest, manifest_sha256
from ..data.loader import ParquetImages, to_model_input
from ..entropy import ESTIMATORS, TAPS, profile_entropy, tap_points
from ..errors import UserError
from ..logs import log, progress
from ..models import build_model, check_arch
from ..precision import resolve_device
from ..selection import layer_costs
from . import PROFILE_FILE


@dataclass(frozen=True)
class Config:
    dataset: str
    arch: str
    weights: str
    out: str
    images: int = 512
    bins: int = 256
    estimator: str = "histogram"
    tap: str = "conv"
    split: str = "train"
    batch_size: int = 32
    device: str = "auto"
    image_size: int | None = None  # None: the dataset's own size
    seed: int = 0  # the image subset, and the random init for --weights none

    def __post_init__(self) -> None:
        check_arch(self.arch)
        if self.images < 1:
            raise UserError(f"--images {self.images}: need at least one profiling image")
        if not 2 <= self.bins <= 65536:
            raise UserError(f"--bins {self.bins}: expected 2 to 65536 bins")
        if self.estimator not in ESTIMATORS:
            raise UserError(f"--estimator {self.estimator}: expected one of {', '.join(ESTIMATORS)}")
        if self.tap not in TAPS:
            raise UserError(f"--tap {self.tap}: expected one of {', '.join(TAPS)}")
        if self.split not in SPLITS:
            raise UserError(f"--split {self.split}: expected one of {', '.join(SPLITS)}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise UserError(f"--image-size {self.image_size}: expected 16 to 1024 pixels")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="Dataset artifact: directory or s3:// prefix")
    p.add_argument("--arch", required=True, help="resnet18, resnet34, squeezenet1_0 or squeezenet1_1")
    p.add_argument("--weights", required=True, help="imagenet, none, a state_dict file or an s3:// URI")
    p.add_argument("--out", required=True, help="output directory or s3:// prefix (profile.json, profile.html)")
    p.add_argument("--images", type=int, default=512, help="profiling images, a seeded class-stratified subset")
    p.add_argument("--bins", type=int, default=256, help="equal-width histogram bins per layer")
    p.add_argument("--estimator", choices=ESTIMATORS, default="histogram",
                   help="one histogram per layer, or the mean of per-channel histograms")
    p.add_argument("--tap", choices=TAPS, default="conv",
                   help="read activations at the conv output, after its BatchNorm, or after BatchNorm and ReLU")
    p.add_argument("--split", default="train", help="dataset split to draw the images from")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--image-size", type=int, default=None, help="resize to this side (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset (and of the random init for --weights none)")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        args.dataset, args.arch, args.weights, args.out, args.images, args.bins, args.estimator, args.tap,
        args.split, args.batch_size, args.device, args.image_size, args.seed,
    )


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
    return torch.stack([ds.pixels(int(i)) for i in progress(indices, desc="loading images", total=len(indices), unit="img")])


def run(cfg: Config) -> dict:
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    with storage.local_copy(cfg.dataset) as root:
        manifest = load_manifest(root)
        ds = ParquetImages(root, cfg.split, image_size=cfg.image_size)
        if len(ds) == 0:
            raise UserError(f"{cfg.dataset}: split {cfg.split!r} has no images to profile")
        indices = stratified_indices(ds.labels, cfg.images, cfg.seed)
        images = load_images(ds, indices)
        data_sha = manifest_sha256(root)
    classes = manifest["classes"]
    with torch.random.fork_rng(devices=[]):  # --weights none: a seeded init, leaving the caller's RNG alone
        torch.manual_seed(cfg.seed)
        model, weights = build_model(cfg.arch, len(classes), cfg.weights)
    model = model.to(device, memory_format=torch.channels_last)
    log.info("profiling %s (%s) on %d %s images at %d px on %s, tap %s, estimator %s",
             cfg.arch, cfg.weights, len(indices), cfg.split, images.shape[-1], device, cfg.tap, cfg.estimator)
    if cfg.tap != "conv" and cfg.arch.startswith("squeezenet"):
        log.warning("%s has no BatchNorm: --tap %s reads the conv output%s", cfg.arch, cfg.tap,
                    " after ReLU" if cfg.tap == "relu" else "")
    taps = tap_points(model, cfg.arch, cfg.tap)
    try:
        results = profile_entropy(model, taps, ModelInputs(images.to(device), cfg.batch_size), cfg.bins, cfg.estimator)
    except ValueError as exc:  # non-finite activations: weights that do not suit the data
        raise UserError(f"--weights {cfg.weights}: {exc}") from exc
    costs = layer_costs(model, cfg.arch)
    profile = {
        "schema_version": SCHEMA_VERSION,
        "arch": cfg.arch,
        **weights.as_dict(),
        "num_classes": len(classes),
        "classes": classes,
        "dataset": cfg.dataset,
        "dataset_manifest_sha256": data_sha,
        "split": cfg.split,
        "num_images": len(indices),
        "image_size": int(images.shape[-1]),
        "seed": cfg.seed,
        "estimator": cfg.estimator,
        "bins": cfg.bins,
        "tap": cfg.tap,
        "layers": [
            {"name": r.name, "params": costs[r.name], "entropy": r.entropy, "entropy_std": r.entropy_std,
             "normalized_entropy": r.normalized_entropy}
            for r in results
        ],
    }
    with storage.output_dir(cfg.out) as tmp:
        storage.write_json(str(tmp / PROFILE_FILE), profile)
        fig = plots.entropy_figure(profile["layers"], title=f"{cfg.arch}: activation entropy per conv layer")
        report = plots.write_report(tmp, "profile", f"Entropy profile: {cfg.arch}", fig, notes=_notes(profile),
                                    table=(("layer", "params", "entropy (bits)", "std", "normalised"), _rows(profile)))
    entropies = [r.entropy for r in results]
    seconds = time.perf_counter() - started
    log.info("wrote %s (%d layers, mean entropy %.3f bits) in %.1f s", storage.join(cfg.out, PROFILE_FILE),
             len(results), float(np.mean(entropies)), seconds)
    return {
        "out": cfg.out,
        "profile": storage.join(cfg.out, PROFILE_FILE),
        "html": storage.join(cfg.out, report["html"]),
        "arch": cfg.arch,
        "weights": cfg.weights,
        "layers": len(results),
        "num_images": len(indices),
        "estimator": cfg.estimator,
        "tap": cfg.tap,
        "bins": cfg.bins,
        "entropy_mean": float(np.mean(entropies)),
        "entropy_min": float(np.min(entropies)),
        "entropy_max": float(np.max(entropies)),
        "device": str(device),
        "seconds": round(seconds, 2),
    }


def _notes(profile: dict) -> list[str]:
    return [
        f"weights {profile['weights']} (sha256 {profile['weights_sha256']}); dataset manifest sha256 "
        f"{profile['dataset_manifest_sha256']}",
        f"{profile['num_images']} {profile['split']} images at {profile['image_size']} px; estimator "
        f"{profile['estimator']}, {profile['bins']} bins, tap {profile['tap']}. Error bars: std over batches.",
    ]


def _rows(profile: dict) -> list[tuple]:
    return [
        (row["name"], f"{row['params']:,}", f"{row['entropy']:.4f}", f"{row['entropy_std']:.4f}",
         f"{row['normalized_entropy']:.4f}")
        for row in profile["layers"]
    ]

"""Turn image sources into a Dataset artifact (Parquet shards + manifest.json).

``synthetic:N`` generates N brain-MRI-like phantoms (see :mod:`entropy_ft.data.synthetic`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import storage
from ..data import synthetic
from ..data.format import DatasetWriter
from ..errors import UserError
from ..logs import log, progress


@dataclass(frozen=True)
class Config:
    sources: tuple[str, ...]
    out: str
    image_size: int = 224
    val_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise UserError("ingest needs at least one SOURCE")
        if not 16 <= self.image_size <= 1024:
            raise UserError(f"--image-size {self.image_size}: expected 16 to 1024 pixels")
        if not 0.0 < self.val_fraction < 0.9:
            raise UserError(f"--val-fraction {self.val_fraction}: expected a fraction between 0 and 0.9")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="synthetic:N")
    p.add_argument("--out", required=True, help="output directory or s3:// prefix")
    p.add_argument("--image-size", type=int, default=224, help="square side in pixels after preprocessing")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of training images held out for validation")
    p.add_argument("--seed", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(tuple(args.sources), args.out, args.image_size, args.val_fraction, args.seed)


def parse_synthetic(source: str) -> int:
    """N from ``synthetic:N``."""
    try:
        n = int(source.split(":", 1)[1])
    except (IndexError, ValueError):
        raise UserError(f"{source}: expected synthetic:N with N a whole number") from None
    if n < 28:
        raise UserError(f"{source}: need at least 28 images so that every class has train, val and test images")
    return n


def run(cfg: Config) -> dict:
    if len(cfg.sources) != 1 or not cfg.sources[0].startswith("synthetic:"):
        raise UserError(f"{' '.join(cfg.sources)}: only synthetic:N sources are supported")
    n = parse_synthetic(cfg.sources[0])
    preprocessing = {"kind": "synthetic", "image_size": cfg.image_size, "mode": "L"}
    with storage.output_dir(cfg.out) as tmp:
        writer = DatasetWriter(tmp, synthetic.CLASSES, cfg.image_size, preprocessing)
        gen = synthetic.generate(n, cfg.image_size, cfg.seed, val_fraction=cfg.val_fraction)
        for split, i, label, pixels, sha in progress(gen, desc="synthetic phantoms", total=n, unit="img"):
            writer.add(split, synthetic_record(i, label, pixels, sha))
        manifest = writer.close(sources=[{"uri": cfg.sources[0], "layout": "synthetic", "seed": cfg.seed}])
    log.info("wrote %d synthetic images to %s (%s)", n, cfg.out, manifest["totals"])
    return {"out": cfg.out, "images": n, "totals": manifest["totals"], "classes": manifest["classes"], "quarantined": 0}


def synthetic_record(i: int, label: int, pixels, sha: str):
    from ..data.format import ImageRecord

    return ImageRecord(pixels, label, synthetic.CLASSES[label], sha, f"synthetic/{i:06d}")

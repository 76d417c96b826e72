"""Benchmark: ingesting the whole Kaggle archive, and the training loader against torchvision's ImageFolder.

    .venv/bin/python benchmarks/ingest_loader.py [--archive PATH] [--workers N] [--batches 20] [--rounds 5]
        [--out results.json]

1. ``entropy-ft ingest`` of the whole archive at 224 px: wall time and images per second.
2. Loader throughput over the ingested train split (raw uint8 pixels from Parquet, in DataLoader
   workers) against ``torchvision.datasets.ImageFolder`` over the same training images as JPEG
   files (Pillow decode), same batch size and worker count, both producing uint8 3x224x224:
   once with the training augmentation in both, once without (the evaluation loaders).
   Images per second for each, and the ratio. Both augment Pillow images (the fastest way
   torchvision offers); ImageFolder decodes every JPEG to RGB, the Parquet loader augments
   the one stored channel of a grayscale scan and copies it to three afterwards.

Writes one JSON object to stdout (and to ``--out`` if given). Not a test: run it by hand, on an
otherwise idle machine, and say which machine gave the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from entropy_ft.data.format import load_manifest
from entropy_ft.data.loader import LoaderConfig, make_loader, train_augmentation
from entropy_ft.device import default_workers
from entropy_ft.steps import ingest

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumor-mri-kaggle.zip"


def endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Batches of images, epoch after epoch."""
    while True:
        for images, _ in loader:
            yield images


def images_per_second(batches: Iterator[torch.Tensor], n: int, prefetched: int) -> float:
    """Throughput over ``n`` batches, after taking the ``prefetched`` batches the workers made while idle."""
    for _ in range(prefetched):
        next(batches)
    seen, started = 0, time.perf_counter()
    for _ in range(n):
        seen += len(next(batches))
    return seen / (time.perf_counter() - started)


def extract_training_jpegs(archive: Path, dest: Path) -> int:
    """The archive's Training/<class>/*.jpg as files, the way ImageFolder users have them."""
    n = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if len(parts) == 3 and parts[0] == "Training" and parts[2].lower().endswith(".jpg"):
                target = dest / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
                n += 1
    return n


def imagefolder_loader(root: Path, batch_size: int, workers: int, train: bool) -> DataLoader:
    """ImageFolder with the same output as the Parquet loader (uint8 3x224x224, augmented when
    training), written the way torchvision's own examples do it and as fast as that idiom gets:
    resize and augment the decoded Pillow image, convert to a tensor last."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    steps = [v2.Resize([224, 224], antialias=True)] + ([train_augmentation()] if train else []) + [v2.PILToTensor()]
    return DataLoader(ImageFolder(str(root), transform=v2.Compose(steps)), batch_size=batch_size, shuffle=train,
                      num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def compare(dataset: Path, jpegs: Path, args: argparse.Namespace, train: bool) -> dict:
    """Both loaders, measured in alternating rounds (median of each), so that load from other
    processes drifting over time hits both alike; one warm-up batch each starts the workers."""
    cfg = LoaderConfig(batch_size=args.batch_size, num_workers=args.workers, seed=0)
    loaders = {"parquet": endless(make_loader(dataset, "train", cfg, train=train)),
               "imagefolder": endless(imagefolder_loader(jpegs, args.batch_size, args.workers, train))}
    for batches in loaders.values():
        next(batches)
    rounds: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.rounds):
        for name, batches in loaders.items():
            rounds[name].append(images_per_second(batches, args.batches, prefetched=2 * max(args.workers, 1)))
    parquet, folder = statistics.median(rounds["parquet"]), statistics.median(rounds["imagefolder"])
    return {"parquet_images_per_s": round(parquet, 1), "imagefolder_images_per_s": round(folder, 1),
            "speedup": round(parquet / folder, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=Path(os.environ.get("ENTROPY_FT_KAGGLE_ZIP", DEFAULT_ARCHIVE)))
    p.add_argument("--workers", type=int, default=default_workers(), help="ingest processes and DataLoader workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20, help="timed batches per loader and round")
    p.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds (median reported)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()

    os.environ.setdefault("ENTROPY_FT_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory(prefix="entropy-ft-bench-") as tmp:
        dataset = Path(tmp, "kaggle")
        started = time.perf_counter()
        summary = ingest.run(ingest.Config(sources=(str(args.archive),), out=str(dataset), image_size=224,
                                           workers=args.workers))
        ingest_s = time.perf_counter() - started
        files = sum(s["files"] for s in load_manifest(dataset).sources)

        jpegs = Path(tmp, "jpeg")
        n_jpegs = extract_training_jpegs(args.archive, jpegs)
        augmented = compare(dataset, jpegs, args, train=True)
        plain = compare(dataset, jpegs, args, train=False)

    result = {
        "machine": {"cpus": os.cpu_count(), "workers": args.workers, "python": sys.version.split()[0],
                    "platform": platform.platform(), "torch": torch.__version__},
        "ingest": {"archive": str(args.archive), "files": files, "images": summary["images"],
                   "seconds": round(ingest_s, 2), "files_per_s": round(files / ingest_s, 1),
                   "quarantined": summary["quarantined"], "duplicates": summary["duplicates"]},
        "loader": {"batch_size": args.batch_size, "timed_batches": args.batches, "rounds": args.rounds,
                   "jpeg_training_files": n_jpegs,
                   "train_augmented": augmented, "eval_no_augmentation": plain},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

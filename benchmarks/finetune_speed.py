"""Benchmark: seconds per training epoch for full against partial selections, per precision.

    .venv/bin/python benchmarks/finetune_speed.py [--images 280] [--image-size 64] [--arch resnet18]
        [--strategies full,alternate,late-half,head] [--precisions fp32,bf16] [--epochs 3] [--device auto]
        [--out results.json]

Generates ``synthetic:IMAGES`` phantoms at ``--image-size`` (or uses ``--dataset``), then
fine-tunes each (strategy, precision) for ``--epochs`` epochs and reports the median seconds
per epoch over the epochs after the first (the first pays for allocator and kernel warm-up),
images per second and the trainable parameter count. Partial strategies:

* ``alternate``: every second backbone conv, the stem excluded (about half the parameters);
* ``late-half``: the second half of the convs in forward order (most parameters, a long frozen prefix);
* ``head``: the classifier only (the whole backbone is the frozen prefix).

Writes one JSON object to stdout (and to ``--out``). Not a test: run it by hand on an otherwise
idle machine, and say which machine gave the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from entropy_ft.data.format import load_manifest
from entropy_ft.device import resolve_device
from entropy_ft.model.factory import build_model, conv_layers, trainable_module_names
from entropy_ft.training.loop import TrainConfig, train


def partial_layers(convs: list[str], strategy: str) -> list[str]:
    return {"full": convs, "alternate": convs[1::2], "late-half": convs[len(convs) // 2 :], "head": []}[strategy]


def synthetic_dataset(n: int, size: int, root: Path) -> Path:
    from entropy_ft.steps import ingest

    out = root / f"synthetic-{n}-{size}"
    ingest.run(ingest.Config(sources=(f"synthetic:{n}",), out=str(out), image_size=size, seed=0))
    return out


def bench(args: argparse.Namespace, dataset: Path) -> list[dict]:
    rows = []
    for precision in args.precisions.split(","):
        for strategy in args.strategies.split(","):
            torch.manual_seed(0)
            model, _ = build_model(args.arch, 4, "none")
            layers = partial_layers(conv_layers(model, args.arch), strategy)
            trainable = trainable_module_names(model, args.arch, layers)
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs, device=args.device,
                              precision=precision, num_workers=args.num_workers)
            result = train(model, args.arch, trainable, dataset, cfg)
            seconds = [h["seconds"] for h in result.history]
            steady = seconds[1:] or seconds
            per_second = [h["images_per_second"] for h in result.history[1:] or result.history]
            rows.append({
                "strategy": strategy, "precision": result.precision, "device": result.device,
                "trainable_params": result.trainable_params, "epoch_seconds": seconds,
                "seconds_per_epoch": statistics.median(steady),
                "images_per_second": statistics.median(per_second),
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="an existing Dataset dir (default: generate synthetic phantoms)")
    p.add_argument("--images", type=int, default=280)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--strategies", default="full,alternate,late-half,head")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out")
    args = p.parse_args()
    os.environ.setdefault("ENTROPY_FT_NO_PROGRESS", "1")
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(args.dataset) if args.dataset else synthetic_dataset(args.images, args.image_size, Path(tmp))
        totals = load_manifest(dataset).totals
        rows = bench(args, dataset)
    result = {
        "machine": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "arch": args.arch, "split_images": totals, "image_size": args.image_size, "batch_size": args.batch_size,
        "results": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

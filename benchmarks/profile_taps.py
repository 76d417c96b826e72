"""How the tap point moves the below-mean selection, and what profiling costs next to plain inference.

Usage: python benchmarks/profile_taps.py DATASET WEIGHTS [--arch resnet18] [--images 64]
       [--batch-size 32] [--device auto] [--out results.json]

For each tap (conv, bn, relu) and estimator it profiles the same seeded image subset,
applies the default ``below-mean`` rule and reports ``reduction_vs_full``. Timing: one
plain inference pass over the images against one profile (one forward pass plus hooks for
the histogram estimator, two for channel), best of ``--repeats``; it also profiles twice
and says whether the results are identical.
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from entropy_ft.data.format import load_manifest
from entropy_ft.data.loader import ParquetImages
from entropy_ft.data.sample import ModelInputs, load_images, stratified_indices
from entropy_ft.device import resolve_device
from entropy_ft.model.factory import build_model, measure_backbone
from entropy_ft.selection.entropy import ESTIMATORS, TAPS, profile_entropy, tap_points
from entropy_ft.selection.rules import parse_rule, select_by_entropy


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("weights")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bins", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    device = resolve_device(args.device)
    classes = load_manifest(args.dataset).classes
    ds = ParquetImages(args.dataset, "train")
    images = load_images(ds, stratified_indices(ds.labels, args.images, 0)).to(device)
    model, _ = build_model(args.arch, len(classes), args.weights)
    model = model.to(device, memory_format=torch.channels_last).eval()
    batches = ModelInputs(images, args.batch_size)
    structure = measure_backbone(model, args.arch)
    costs = structure.costs

    def plain() -> None:
        with torch.inference_mode():
            for x in batches:
                model(x)

    plain()  # warm-up: kernel selection, allocator
    plain_s, _ = _timed(plain, device, args.repeats)
    rows = []
    for estimator in ESTIMATORS:
        for tap in TAPS:
            taps = tap_points(model, args.arch, tap)
            seconds, result = _timed(lambda: profile_entropy(model, taps, batches, args.bins, estimator), device,
                                     args.repeats)
            again = profile_entropy(model, taps, batches, args.bins, estimator)
            entropy = {r.name: r.entropy for r in result}
            layers = select_by_entropy(entropy, costs, parse_rule("below-mean"))
            acc = structure.accounting(layers)
            rows.append({
                "estimator": estimator, "tap": tap, "selected_layers": len(layers),
                "trainable_params": acc["trainable_params"], "reduction_vs_full": round(acc["reduction_vs_full"], 4),
                "profile_s": round(seconds, 3), "plain_inference_s": round(plain_s, 3),
                "profile_over_inference": round(seconds / plain_s, 2), "deterministic": again == result,
            })
            print(json.dumps(rows[-1]), flush=True)
    summary = {"arch": args.arch, "weights": args.weights, "images": len(images), "image_size": int(images.shape[-1]),
               "batch_size": args.batch_size, "bins": args.bins, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch_threads": torch.get_num_threads(), "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()

"""Profile the activation entropy of every backbone conv layer on a seeded subset of a dataset.

Writes ``profile.json`` (:class:`entropy_ft.artifacts.Profile`) and ``profile.html`` /
``profile.png`` (entropy per layer) into ``--out``, a directory or ``s3://`` prefix. With
``--bootstrap N`` profile.json also holds every layer's entropy on N bootstrap resamples of the
profiling batches and what the default rule selects over them (:mod:`entropy_ft.selection.stability`),
from which ``select`` reports, or requires, a stable choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from entropy_ft import plots, storage
from entropy_ft.artifacts import DatasetManifest, Profile
from entropy_ft.data.format import SPLITS, load_manifest, manifest_sha256
from entropy_ft.data.loader import ParquetImages
from entropy_ft.data.sample import ModelInputs, batch_order, load_images, stratified_indices
from entropy_ft.device import resolve_device
from entropy_ft.errors import UserError
from entropy_ft.logs import log
from entropy_ft.model.archs import CONV_LAYERS, arch_problem, backbone
from entropy_ft.model.factory import build_model, measure_backbone
from entropy_ft.options import IMAGE_SIZE, Options, at_least, between, option
from entropy_ft.selection.entropy import (
    ESTIMATORS,
    TAPS,
    LayerEntropy,
    bootstrap_problem,
    profile_entropy,
    tap_points,
)
from entropy_ft.selection.rules import DEFAULT_RULE, PAPER_RULE, parse_rule
from entropy_ft.selection.stability import resampled_selections, summarize


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    dataset: str = option(flag="DATASET", help="Dataset artifact: directory or s3:// prefix")
    arch: str = option("resnet18", check=arch_problem, help=f"backbone architecture: {', '.join(CONV_LAYERS)}")
    weights: str = option("imagenet", help="pretrained weights: imagenet, none, a state_dict file or an s3:// URI")
    out: str = option(help="output directory or s3:// prefix (profile.json, profile.html)")
    images: int = option(512, check=at_least(1, "profiling image"),
                         help="profiling images, a seeded class-stratified subset")
    bins: int = option(256, check=between(2, 65536, "bins"), help="equal-width histogram bins per layer")
    estimator: str = option("histogram", choices=ESTIMATORS,
                            help="one histogram per layer, or the mean of per-channel histograms")
    tap: str = option("conv", choices=TAPS,
                      help="read activations at the conv output, after its BatchNorm, or after BatchNorm and ReLU")
    split: str = option("train", choices=SPLITS, help="dataset split to draw the images from")
    batch_size: int = option(32, check=at_least(1), help="images per forward pass")
    device: str = option("auto", help="auto, cpu or cuda[:N]")
    image_size: int | None = option(None, check=IMAGE_SIZE, help="resize to this side (default: the dataset's)")
    seed: int = option(0, help="seed of the image subset, its batch order, the bootstrap (and of the random init "
                               "for --weights none)")
    bootstrap: int = option(20, check=between(0, 10000, "resamples"),
                            help="bootstrap resamples of the profiling batches, to measure how stable a selection is "
                                 "(0: none; needs the histogram estimator and at least 2 batches)")


def run(cfg: Config) -> dict:
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    with storage.local_copy(DatasetManifest.folder_of(cfg.dataset)) as root:
        manifest = load_manifest(root)
        ds = ParquetImages(root, cfg.split, image_size=cfg.image_size)
        if len(ds) == 0:
            raise UserError(f"{cfg.dataset}: split {cfg.split!r} has no images to profile")
        indices = batch_order(stratified_indices(ds.labels, cfg.images, cfg.seed), cfg.seed)
        images = load_images(ds, indices)
        data_sha = manifest_sha256(root)
    classes = manifest.classes
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
    batches = ModelInputs(images.to(device), cfg.batch_size)
    problem = bootstrap_problem(cfg.estimator, cfg.bins, len(batches)) if cfg.bootstrap else None
    if problem:  # a warning, not an error: the default asks for resamples wherever they can be had
        log.warning("--bootstrap %d skipped: %s (%d images, --batch-size %d)", cfg.bootstrap, problem, len(indices),
                    cfg.batch_size)
    resamples = 0 if problem else cfg.bootstrap
    try:
        results = profile_entropy(model, taps, batches, cfg.bins, cfg.estimator, bootstrap=resamples, seed=cfg.seed)
    except ValueError as exc:  # non-finite activations: weights that do not suit the data
        raise UserError(f"--weights {cfg.weights}: {exc}") from exc
    costs = measure_backbone(model, cfg.arch).costs
    profile = Profile(
        arch=cfg.arch, weights=weights.source, weights_sha256=weights.sha256, num_classes=len(classes),
        classes=list(classes), dataset=cfg.dataset, dataset_manifest_sha256=data_sha, split=cfg.split,
        num_images=len(indices), image_size=int(images.shape[-1]), seed=cfg.seed, estimator=cfg.estimator,
        bins=cfg.bins, tap=cfg.tap,
        layers=[{"name": r.name, "params": costs[r.name], "entropy": r.entropy, "entropy_std": r.entropy_std,
                 "normalized_entropy": r.normalized_entropy} for r in results],
        bootstrap=_bootstrap(results, resamples, len(batches), cfg, len(classes)),
    )
    with storage.output_dir(cfg.out) as tmp:
        profile.write(tmp)
        fig = plots.entropy_figure(profile.layers, title=f"{cfg.arch}: activation entropy per conv layer")
        report = plots.write_report(tmp, "profile", f"Entropy profile: {cfg.arch}", fig, notes=_notes(profile),
                                    table=(("layer", "params", "entropy (bits)", "std", "normalised"), _rows(profile)))
    entropies = [r.entropy for r in results]
    seconds = time.perf_counter() - started
    log.info("wrote %s (%d layers, mean entropy %.3f bits) in %.1f s", Profile.file_in(cfg.out),
             len(results), float(np.mean(entropies)), seconds)
    return {
        "out": cfg.out,
        "profile": Profile.file_in(cfg.out),
        "html": storage.join(cfg.out, report["html"]),
        "arch": cfg.arch,
        "weights": cfg.weights,
        "layers": len(results),
        "num_images": len(indices),
        "estimator": cfg.estimator,
        "tap": cfg.tap,
        "bins": cfg.bins,
        "bootstrap": resamples,
        "entropy_mean": float(np.mean(entropies)),
        "entropy_min": float(np.min(entropies)),
        "entropy_max": float(np.max(entropies)),
        "device": str(device),
        "seconds": round(seconds, 2),
    }


def _bootstrap(results: list[LayerEntropy], resamples: int, batches: int, cfg: Config, num_classes: int) -> dict | None:
    """profile.json's ``bootstrap``: each layer's entropy on every resample (forward order), and the
    default and the paper's rules' selection frequencies and cost spread over them; None without resamples."""
    if not resamples:
        return None
    structure = backbone(cfg.arch, num_classes)
    resampled = [{r.name: r.resampled[i] for r in results} for i in range(resamples)]
    return {
        "resamples": resamples, "seed": cfg.seed, "unit": "batch", "batches": batches, "batch_size": cfg.batch_size,
        "entropies": {r.name: list(r.resampled) for r in results},
        "rules": {str(rule): summarize(resampled_selections(resampled, structure.costs, rule), structure)
                  for rule in map(parse_rule, (DEFAULT_RULE, PAPER_RULE))},
    }


def _notes(profile: Profile) -> list[str]:
    notes = [
        f"weights {profile.weights} (sha256 {profile.weights_sha256}); dataset manifest sha256 "
        f"{profile.dataset_manifest_sha256}",
        f"{profile.num_images} {profile.split} images at {profile.image_size} px; estimator "
        f"{profile.estimator}, {profile.bins} bins, tap {profile.tap}. Error bars: std over batches.",
    ]
    if profile.bootstrap:
        boot = profile.bootstrap
        rule = boot["rules"][DEFAULT_RULE]
        low, high = (100 * rule["reduction_vs_full"][p] for p in ("p5", "p95"))
        notes.append(
            f"Bootstrap: {boot['resamples']} resamples of the {boot['batches']} batches; {DEFAULT_RULE} picks "
            f"{rule['distinct_sets']} distinct layer sets, {low:.1f}% to {high:.1f}% fewer trainable parameters "
            "than full fine-tuning (5th to 95th percentile); selection.html has the detail.")
    return notes


def _rows(profile: Profile) -> list[tuple]:
    return [
        (row["name"], f"{row['params']:,}", f"{row['entropy']:.4f}", f"{row['entropy_std']:.4f}",
         f"{row['normalized_entropy']:.4f}")
        for row in profile.layers
    ]

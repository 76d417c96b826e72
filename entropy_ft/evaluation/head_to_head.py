"""Two Model dirs on the same images with the same noise: the evidence the registry gate decides on.

Each model sees the test split of one Dataset at its own input size, with Gaussian noise drawn
from the same (seed, sigma) generators as ``entropy-ft evaluate`` uses, and the two sets of
predicted labels are compared pair by pair (:func:`entropy_ft.evaluation.paired.compare_paired`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from entropy_ft.data.loader import LoaderConfig
from entropy_ft.data.on_device import eval_batches
from entropy_ft.device import resolve_device
from entropy_ft.errors import UserError
from entropy_ft.evaluation.noise import noise_generator, predict
from entropy_ft.evaluation.paired import PairedComparison, compare_paired
from entropy_ft.logs import log
from entropy_ft.model.model_dir import load_model_dir


def head_to_head(candidate_dir: Path, champion_dir: Path, data_root: Path, metric: str, sigmas: Sequence[float],
                 seed: int, split: str = "test", device: str = "auto") -> dict[float, PairedComparison]:
    """One paired comparison per sigma of the candidate against the champion on ``split``."""
    dev = resolve_device(device)
    labels = None
    predictions: dict[tuple[str, float], object] = {}
    classes: list[str] | None = None
    for name, folder in (("candidate", candidate_dir), ("champion", champion_dir)):
        model, meta = load_model_dir(folder, dev)
        if classes is not None and list(meta.classes) != classes:
            raise UserError(f"the champion predicts {meta.classes}, the candidate {classes}: no comparison possible")
        classes = list(meta.classes)
        loader = eval_batches(data_root, split, LoaderConfig(64, 0, meta.image_size, seed), dev)
        if len(loader.dataset) == 0:
            raise UserError(f"{data_root}: the {split} split has no images to compare the models on")
        for sigma in sigmas:
            y, logits = predict(model, loader, dev, noise_sigma=sigma, generator=noise_generator(seed, sigma),
                                desc=f"{name} sigma {sigma:g}")
            labels, predictions[name, sigma] = y, logits.argmax(axis=1)
    log.info("head to head on %d %s images of %s at sigma %s", len(labels), split, data_root,
             ", ".join(f"{s:g}" for s in sigmas))
    return {s: compare_paired(labels, predictions["candidate", s], predictions["champion", s], len(classes), metric,
                              s, seed) for s in sigmas}

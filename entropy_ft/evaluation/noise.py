"""Predictions and Gaussian-noise robustness of a model on a split.

Noise: N(0, sigma^2) is added to pixels in [0, 1] before ImageNet normalisation and
clipped back to [0, 1]. It is drawn on the CPU from a generator seeded by (seed, sigma),
so the same seed gives the same noisy images on any device and whatever other sigmas are
evaluated alongside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from entropy_ft.data.loader import to_model_input
from entropy_ft.device import autocast
from entropy_ft.errors import UserError
from entropy_ft.evaluation.calibration import coverage, reliability, softmax
from entropy_ft.evaluation.metrics import classification_metrics
from entropy_ft.evaluation.uncertainty import per_class_rates, score_cis
from entropy_ft.logs import progress

DEFAULT_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4)


def parse_sigmas(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.2"`` -> (0.0, 0.1, 0.2)."""
    try:
        return tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise UserError(f"--noise {text}: expected comma-separated numbers such as 0,0.1,0.2") from None


def sigmas_problem(sigmas: Sequence[float]) -> str | None:
    """What is wrong with a set of sigmas, if anything: pixels are in [0, 1], so is every sigma."""
    if not sigmas:
        return "give at least one sigma, such as 0,0.1,0.2"
    bad = [s for s in sigmas if not 0.0 <= s <= 1.0]  # also catches NaN
    return f"sigma {bad[0]:g} is out of range; each sigma must be between 0 and 1" if bad else None


def noise_generator(seed: int, sigma: float) -> torch.Generator:
    """A CPU generator that depends only on the seed and this sigma."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round(sigma * 10_000))


def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str = "fp32",
    noise_sigma: float = 0.0,
    generator: torch.Generator | None = None,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and fp32 logits for every image of ``loader``, in loader order (model in eval mode)."""
    was_training = model.training
    model.eval()
    labels, logits = [], []
    try:
        with torch.inference_mode():
            for images, y in progress(loader, desc=desc, total=len(loader), unit="batch"):
                x = to_model_input(images, device, noise_sigma=noise_sigma, generator=generator)
                with autocast(device, precision):
                    out = model(x)
                logits.append(out.float().cpu())
                labels.append(y)
    finally:
        model.train(was_training)
    if not labels:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    return torch.cat(labels).numpy(), torch.cat(logits).numpy()


def noise_robustness(
    model: nn.Module,
    loader: DataLoader,
    classes: Sequence[str],
    sigmas: Sequence[float],
    seed: int,
    device: torch.device,
    temperature: float = 1.0,
    clean: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict]:
    """One metric row per sigma: ``{"sigma": s, **classification_metrics, "ci", "per_class", "ece",
    "ece_uncalibrated"}``, with 95% CIs of the scores and the per-class rates
    (:mod:`entropy_ft.evaluation.uncertainty`), and the calibration error of the probabilities
    with and without the model's ``temperature`` (:mod:`entropy_ft.evaluation.calibration`); the
    sigma-0 row also has the reliability bins and the coverage curve. ``clean``: the sigma-0 labels
    and logits (:func:`predict`) when the caller already has them, so they are not computed twice."""
    rows = []
    for sigma in sigmas:
        if sigma == 0 and clean is not None:
            y, logits = clean
        else:
            y, logits = predict(model, loader, device, noise_sigma=sigma, generator=noise_generator(seed, sigma),
                                desc=f"sigma {sigma:g}")
        pred = logits.argmax(axis=1)
        metrics = classification_metrics(y, pred, classes)
        probs = softmax(logits, temperature)
        ece, bins = reliability(probs, y)
        row = {"sigma": float(sigma), **metrics, "ci": score_cis(y, pred, len(classes), seed),
               "per_class": per_class_rates(np.asarray(metrics["confusion_matrix"]), classes),
               "ece": ece, "ece_uncalibrated": reliability(softmax(logits), y)[0]}
        if sigma == 0:
            row.update(reliability=bins, coverage=coverage(probs, y))
        rows.append(row)
    return rows

"""Classification metrics and Gaussian-noise robustness (DESIGN section 6).

The metrics are pure numpy functions of a confusion matrix (rows: true class, columns:
predicted class). Conventions, as in scikit-learn: a class with no true images has no
recall (``None`` in JSON) and is left out of balanced accuracy; macro-F1 averages over the
classes that occur in the labels or the predictions.

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

from .data.loader import to_model_input
from .logs import progress
from .precision import autocast

DEFAULT_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of images of true class t predicted as p."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels and predictions differ in shape: {y_true.shape} vs {y_pred.shape}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FN) per class; NaN for a class with no true images."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the labels: accuracy that a majority class cannot inflate."""
    recall = per_class_recall(cm)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN) over classes seen in labels or predictions."""
    tp = np.diag(cm).astype(np.float64)
    denom = 2 * tp + (cm.sum(axis=0) - tp) + (cm.sum(axis=1) - tp)
    seen = denom > 0
    return float((2 * tp[seen] / denom[seen]).mean()) if seen.any() else float("nan")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """The JSON-ready metric block of eval.json for one set of predictions."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    recall = per_class_recall(cm)
    return {
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "balanced_accuracy": balanced_accuracy(cm),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        "confusion_matrix": cm.tolist(),
    }


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
) -> list[dict]:
    """One metric row per sigma: ``{"sigma": s, **classification_metrics}``."""
    rows = []
    for sigma in sigmas:
        y, logits = predict(model, loader, device, noise_sigma=sigma, generator=noise_generator(seed, sigma),
                            desc=f"sigma {sigma:g}")
        rows.append({"sigma": float(sigma), **classification_metrics(y, logits.argmax(axis=1), classes)})
    return rows

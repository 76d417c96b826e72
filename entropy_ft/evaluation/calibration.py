"""Honest probabilities: temperature scaling, expected calibration error, and answering only when sure.

* Temperature scaling (Guo et al., 2017): one scalar T divides the logits before the softmax. It
  is fitted on the validation split by minimising the negative log-likelihood, so it never
  changes which class is predicted, only how sure the model says it is.
* Expected calibration error (ECE): the confidence (top probability) of every image is binned
  into ``bins`` equal-width bins over [0, 1]; ECE is the image-weighted mean gap between a
  bin's mean confidence and its accuracy. The bins are the reliability diagram.
* Abstention: below a confidence threshold the model answers "uncertain". The coverage curve
  says, for each threshold, which share of images still gets an answer and how accurate those
  answers are.

Pure numpy/scipy functions of logits (or probabilities) and labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize
from scipy.special import log_softmax

BINS = 15
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of ``labels`` under softmax(logits / T)."""
    if not len(labels):
        return 1.0
    result = optimize.minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                                      bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                      options={"xatol": 1e-4})
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> tuple[float, list[dict]]:
    """(ECE, one row per non-empty bin: {low, high, images, confidence, accuracy})."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        conf, acc = float(confidence[members].mean()), float(correct[members].mean())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "images": int(members.sum()), "confidence": conf,
                     "accuracy": acc})
        ece += members.sum() / len(labels) * abs(conf - acc)
    return float(ece), rows


def coverage(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """For each threshold: the share of images answered (top probability at or above it) and their accuracy."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    rows = []
    for t in thresholds:
        answered = confidence >= t
        rows.append({"threshold": float(t), "coverage": float(answered.mean()) if len(labels) else 0.0,
                     "accuracy": float(correct[answered].mean()) if answered.any() else None})
    return rows

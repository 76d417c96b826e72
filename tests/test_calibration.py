"""Calibration: temperature scaling recovers a known temperature, ECE on hand-counted cases, abstention."""

from __future__ import annotations

import numpy as np
import pytest

from entropy_ft.evaluation.calibration import coverage, fit_temperature, nll, reliability, softmax
from entropy_ft.tracking.serving import UNCERTAIN, answers


def _sampled(temperature: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): that T is the calibrated one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 4))
    probs = softmax(logits, temperature)
    labels = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_the_temperature_and_lowers_nll_and_ece(true_t):
    logits, labels = _sampled(true_t)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.1)
    assert nll(logits, labels, t) <= nll(logits, labels) + 1e-9
    if true_t != 1.0:
        assert reliability(softmax(logits, t), labels)[0] < reliability(softmax(logits), labels)[0]
    assert (softmax(logits, t).argmax(axis=1) == logits.argmax(axis=1)).all()  # never changes the answer


def test_ece_and_reliability_bins_on_a_hand_counted_case():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 0])  # confident bin: 1 of 2 right at 0.95; middle bin: 1 of 2 right at 0.55
    ece, bins = reliability(probs, labels, bins=10)
    assert [(b["images"], b["accuracy"]) for b in bins] == [(2, 0.5), (2, 0.5)]
    assert ece == pytest.approx(0.5 * abs(0.55 - 0.5) + 0.5 * abs(0.95 - 0.5))


def test_coverage_and_abstention_answers():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1])
    curve = {row["threshold"]: row for row in coverage(probs, labels, thresholds=(0.0, 0.65, 0.95))}
    assert curve[0.0]["coverage"] == 1.0 and curve[0.0]["accuracy"] == pytest.approx(2 / 3)
    assert curve[0.65]["coverage"] == pytest.approx(2 / 3) and curve[0.65]["accuracy"] == 1.0
    assert curve[0.95] == {"threshold": 0.95, "coverage": 0.0, "accuracy": None}
    assert answers(probs, ["a", "b"], 0.65) == ["a", UNCERTAIN, "b"]
    assert answers(probs, ["a", "b"], None) == ["a", "a", "b"]

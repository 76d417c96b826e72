"""Two models on the same images: the paired difference of a metric, its 95% CI and one-sided p-values.

The registry gate asks "is the candidate better than the champion on these images, beyond
chance?". Both models' predictions on the same images are compared pair by pair:

* accuracy: the exact McNemar test on the discordant images (candidate right and champion
  wrong, and the reverse), a binomial test with p = 1/2 (``scipy.stats.binomtest``);
* macro-F1 and balanced accuracy, which are not sums over images: a paired permutation test
  that swaps the two models' predictions image by image (``scipy.stats.permutation_test``).

The 95% CI of the difference comes from a paired percentile bootstrap over images
(``scipy.stats.bootstrap``). Everything is seeded, so the same predictions give the same
decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from entropy_ft.evaluation.metrics import accuracy, balanced_accuracy, confusion_matrix, macro_f1

METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "accuracy": accuracy, "macro_f1": macro_f1, "balanced_accuracy": balanced_accuracy,
}
RESAMPLES = 2000


@dataclass(frozen=True)
class PairedComparison:
    """Candidate against champion on the same ``images`` at one noise ``sigma``."""

    metric: str
    sigma: float
    images: int
    candidate: float
    champion: float
    delta: float  # candidate - champion
    ci_low: float  # 95% CI of delta
    ci_high: float
    p_better: float  # one-sided p-value of "the candidate is better"
    p_worse: float  # one-sided p-value of "the candidate is worse"
    test: str

    def to_json(self) -> dict:
        return asdict(self)


def compare_paired(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray, num_classes: int, metric: str,
                   sigma: float = 0.0, seed: int = 0, resamples: int = RESAMPLES) -> PairedComparison:
    """The paired comparison of two models' predicted labels on the same images (module docstring)."""
    y_true, candidate, champion = (np.asarray(a, dtype=np.int64) for a in (y_true, candidate, champion))
    if not (len(y_true) == len(candidate) == len(champion)) or not len(y_true):
        raise ValueError("both models need predictions for the same, non-empty set of images")
    score = METRICS[metric]

    def value(y: np.ndarray, pred: np.ndarray) -> float:
        return score(confusion_matrix(y, pred, num_classes))

    def difference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return value(y, a) - value(y, b)

    ours, theirs = value(y_true, candidate), value(y_true, champion)
    if metric == "accuracy":
        right, wrong = candidate == y_true, champion == y_true
        wins, losses = int(np.sum(right & ~wrong)), int(np.sum(~right & wrong))
        p_better = stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
        p_worse = stats.binomtest(losses, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
        test = f"exact McNemar ({wins} images only the candidate gets right, {losses} only the champion)"
    else:
        null = stats.permutation_test((candidate, champion), lambda a, b: difference(y_true, a, b),
                                      permutation_type="samples", n_resamples=resamples, vectorized=False,
                                      random_state=seed).null_distribution
        observed = ours - theirs
        p_better = float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))
        p_worse = float((1 + np.sum(null <= observed + 1e-12)) / (1 + len(null)))
        test = f"paired permutation test ({resamples} resamples)"
    if np.array_equal(candidate, champion):
        low = high = 0.0  # no spread to resample
    else:
        ci = stats.bootstrap((y_true, candidate, champion), difference, paired=True, vectorized=False,
                             n_resamples=resamples, confidence_level=0.95, method="percentile",
                             random_state=seed).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return PairedComparison(metric, float(sigma), len(y_true), ours, theirs, ours - theirs, low, high,
                            float(p_better), float(p_worse), test)

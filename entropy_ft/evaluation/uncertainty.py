"""How sure the headline numbers are: 95% confidence intervals for a test set of finite size.

* accuracy, macro-F1 and balanced accuracy: percentile bootstrap over images
  (``scipy.stats.bootstrap``, seeded), since macro-F1 and balanced accuracy are not simple
  proportions;
* per class, the four rates a clinical reader asks for, each a proportion with its Wilson
  score interval (``scipy.stats.binomtest(...).proportion_ci``), which stays inside [0, 1] and
  behaves on small counts: sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP) and
  NPV TN/(TN+FN), one class against the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from entropy_ft.evaluation.metrics import accuracy, balanced_accuracy, confusion_matrix, macro_f1

LEVEL = 0.95
RESAMPLES = 1000
SCORES = {"accuracy": accuracy, "macro_f1": macro_f1, "balanced_accuracy": balanced_accuracy}


def score_cis(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, seed: int = 0,
              resamples: int = RESAMPLES) -> dict[str, list[float]]:
    """{metric: [low, high]} for accuracy, macro-F1 and balanced accuracy (percentile bootstrap over images)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    out = {}
    for name, score in SCORES.items():
        if np.all(y_true == y_true[0]) and np.all(y_pred == y_pred[0]):  # one value everywhere: no spread
            value = score(confusion_matrix(y_true, y_pred, num_classes))
            out[name] = [value, value]
            continue
        ci = stats.bootstrap((y_true, y_pred), lambda y, p, s=score: s(confusion_matrix(y, p, num_classes)),
                             paired=True, vectorized=False, n_resamples=resamples, confidence_level=LEVEL,
                             method="percentile", random_state=seed).confidence_interval
        out[name] = [float(ci.low), float(ci.high)]
    return out


def _rate(hits: int, total: int) -> dict:
    if total == 0:
        return {"value": None, "ci": None, "n": 0}
    ci = stats.binomtest(hits, total).proportion_ci(confidence_level=LEVEL, method="wilson")
    return {"value": hits / total, "ci": [float(ci.low), float(ci.high)], "n": total}


def per_class_rates(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """{class: {sensitivity, specificity, ppv, npv}}, each {value, ci: [low, high], n} (one class against the rest)."""
    cm = np.asarray(cm, dtype=np.int64)
    total = int(cm.sum())
    out = {}
    for k, name in enumerate(classes):
        tp = int(cm[k, k])
        fn = int(cm[k].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = total - tp - fn - fp
        out[name] = {"sensitivity": _rate(tp, tp + fn), "specificity": _rate(tn, tn + fp),
                     "ppv": _rate(tp, tp + fp), "npv": _rate(tn, tn + fn)}
    return out

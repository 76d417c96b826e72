"""How stable is a rule's choice of layers: the selection repeated over bootstrap resamples of the profile.

A profile measures each layer's entropy on one sample of images; an equally valid sample can
move a layer that sits near the rule's threshold (the below-mean rule's mean, a quantile's
rank, a budget's cap) to the other side. The profile step therefore also computes every
layer's entropy on ``resamples`` bootstrap resamples of its batches (see
:mod:`entropy_ft.selection.entropy` for why the batch is the unit); here the rule is applied
to each resample, which gives per layer the share of resamples that select it, and the spread
of what the selection costs. ``select --stability S`` keeps the layers selected in at least S
of the resamples.

Everything here is pure arithmetic on names, entropies and the parameter tables of
:mod:`entropy_ft.model.archs`, with no torch, so the select step can redo it for any rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from entropy_ft.model.archs import Backbone
from entropy_ft.selection.rules import Rule, select_by_entropy

PERCENTILES = (5, 50, 95)


def bootstrap_indices(units: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, units) unit indices drawn uniformly with replacement, from a generator seeded
    by ``seed`` alone, so a profile's resamples are reproducible and independent of the device."""
    if units < 1 or resamples < 0:
        raise ValueError(f"need units >= 1 and resamples >= 0, got {units} and {resamples}")
    return np.random.default_rng(seed).integers(0, units, size=(resamples, units))


def resampled_selections(
    resampled: Sequence[Mapping[str, float]], costs: Mapping[str, int], rule: Rule,
    stages: Mapping[str, str] | None = None,
) -> list[list[str]]:
    """The layers ``rule`` selects on each resample's entropies (forward order, as the rule gives them)."""
    return [select_by_entropy(entropy, costs, rule, stages) for entropy in resampled]


def selection_counts(selections: Sequence[Sequence[str]], names: Sequence[str]) -> dict[str, int]:
    """How many selections contain each layer, in the order of ``names``."""
    chosen = [set(s) for s in selections]
    return {n: sum(n in s for s in chosen) for n in names}


def stable_layers(selections: Sequence[Sequence[str]], names: Sequence[str], threshold: float) -> list[str]:
    """Layers in at least ``threshold`` (0 < threshold <= 1) of ``selections``, in the order of ``names``.

    Compared as counts, count >= ceil(threshold * resamples), so a share such as 0.3 of 10
    resamples means 3 and not whatever 0.3 * 10 rounds to in floating point."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not selections:
        raise ValueError("no resampled selections")
    need = math.ceil(threshold * len(selections) - 1e-9)
    return [n for n, c in selection_counts(selections, names).items() if c >= need]


def spread(values: Sequence[float]) -> dict[str, float]:
    """5th, 50th and 95th percentile (linear interpolation), mean and population standard deviation."""
    x = np.asarray(values, dtype=np.float64)
    return {**{f"p{q}": float(np.percentile(x, q)) for q in PERCENTILES}, "mean": float(x.mean()),
            "std": float(x.std())}


def summarize(selections: Sequence[Sequence[str]], structure: Backbone) -> dict:
    """What the resampled selections say: per layer the share of resamples selecting it (forward
    order), the spread of the reduction in trainable parameters against full fine-tuning and of
    the number of layers, and how many distinct layer sets occur."""
    names = list(structure.costs)
    n = len(selections)
    return {
        "resamples": n,
        "frequency": {name: c / n for name, c in selection_counts(selections, names).items()},
        "reduction_vs_full": spread([structure.accounting(s)["reduction_vs_full"] for s in selections]),
        "selected_layers": spread([len(s) for s in selections]),
        "distinct_sets": len({tuple(s) for s in selections}),
    }

"""Which conv layers to unfreeze: the entropy rules and the baselines, with exact parameter accounting.

Strategies: ``entropy`` (a rule over the profiled entropies), and the baselines ``full``
(every conv), ``head`` (no conv, only the new classifier) and ``random`` (seeded random
convs with the parameter count of a given budget, normally the entropy selection's).

A layer's cost is what unfreezing it trains: the conv and the BatchNorm right after it
(:func:`entropy_ft.model.factory.trainable_module_names`). The head is trained by every strategy
and is not part of any budget, so budgets count backbone parameters only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from entropy_ft.errors import UserError

STRATEGIES = ("entropy", "full", "head", "random")
RULED = ("entropy", "random")  # the strategies a rule applies to (random matches its budget)
DEFAULT_RULE = "below-mean"
_RULE_HELP = "expected below-mean, quantile:Q or budget:F with Q, F between 0 and 1"


@dataclass(frozen=True)
class Rule:
    """A parsed entropy rule: ``below-mean``, ``quantile:Q`` or ``budget:F``."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_rule(text: str) -> Rule:
    """``--rule`` text -> Rule; anything else is a UserError that quotes it."""
    kind, sep, arg = text.strip().partition(":")
    if kind == DEFAULT_RULE and not sep:
        return Rule(kind)
    if kind not in ("quantile", "budget") or not sep:
        raise UserError(f"--rule {text!r}: unknown rule; {_RULE_HELP}")
    name = "Q" if kind == "quantile" else "F"
    try:
        value = float(arg)
    except ValueError:
        raise UserError(f"--rule {text!r}: {name} must be a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise UserError(f"--rule {text!r}: {name} must be between 0 and 1")
    return Rule(kind, value)


def select_by_entropy(entropy: Mapping[str, float], costs: Mapping[str, int], rule: Rule) -> list[str]:
    """Layers chosen by ``rule``, in the forward order of ``entropy``.

    - below-mean: entropy strictly below the mean over all layers.
    - quantile:Q: the floor(Q * layers) lowest-entropy layers.
    - budget:F: lowest-entropy layers first, stopping before the one that would take the
      total past F of the backbone parameters (a budget is a cap, never exceeded).
    Ties in entropy go to the earlier layer, so the result is deterministic.
    """
    names = list(entropy)
    ranked = sorted(names, key=lambda n: (entropy[n], names.index(n)))
    if rule.kind == "below-mean":
        mean = sum(entropy.values()) / len(entropy)
        chosen = {n for n in names if entropy[n] < mean}
    elif rule.kind == "quantile":
        chosen = set(ranked[: math.floor(rule.value * len(names) + 1e-9)])
    elif rule.kind == "budget":
        cap = rule.value * sum(costs[n] for n in names)
        chosen, total = set(), 0
        for n in ranked:
            if total + costs[n] > cap:
                break
            chosen.add(n)
            total += costs[n]
    else:
        raise ValueError(f"unknown rule kind {rule.kind!r}")
    return [n for n in names if n in chosen]


def select_random(costs: Mapping[str, int], budget: int, seed: int) -> list[str]:
    """Seeded random layers whose cost stays within ``budget`` backbone parameters.

    Layers are visited in a seeded random order and taken whenever they still fit, so
    the total never exceeds the budget and falls short of it by less than any layer
    left out: it matches the budget within one layer. Forward order in the result.
    """
    names = list(costs)
    order = random.Random(seed).sample(names, len(names))
    chosen, total = set(), 0
    for n in order:
        if total + costs[n] <= budget:
            chosen.add(n)
            total += costs[n]
    return [n for n in names if n in chosen]


def strategy_layers(strategy: str, all_layers: Sequence[str]) -> list[str]:
    """Layers of the fixed baselines ``full`` and ``head``."""
    if strategy == "full":
        return list(all_layers)
    if strategy == "head":
        return []
    raise ValueError(f"strategy {strategy!r} needs a profile or a budget")

"""Carving validation (and, for sources without one, test) splits: stratified by class, seeded, group-aware.

Copies of one image (exact or near duplicates, see :mod:`.dedup`) are carved together, so
carving never creates leakage of its own: a duplicate pair inside the training folder ends up
wholly in train or wholly in val, never one copy in each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def carve(
    pool: Sequence[int], class_of: Sequence[str], unit_of: np.ndarray, fraction: float, rng: np.random.Generator
) -> set[int]:
    """Items taken out of ``pool``: about ``fraction`` of each class, whole units (duplicate groups) at a time.

    A unit belongs to the class of its first item. Units are visited in a seeded random order
    per class and taken while they fit under round(fraction x class size).
    """
    units: dict[int, list[int]] = defaultdict(list)
    for i in sorted(pool):
        units[int(unit_of[i])].append(i)
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for members in sorted(units.values(), key=lambda m: m[0]):
        by_class[class_of[members[0]]].append(members)
    taken: set[int] = set()
    for cls in sorted(by_class):
        class_units = by_class[cls]
        target = int(round(sum(len(u) for u in class_units) * fraction))
        count = 0
        for k in rng.permutation(len(class_units)):
            if count == target:
                break
            if count + len(class_units[k]) <= target:
                taken.update(class_units[k])
                count += len(class_units[k])
    return taken

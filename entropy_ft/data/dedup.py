"""Exact and near-duplicate images, within and across splits and sources, and what to do about them.

* Exact duplicates share the sha256 of their decoded pixels (see :mod:`.preprocess`).
* Near-duplicates are images whose 256-bit pHashes differ in at most ``NEAR_MAX_DISTANCE`` bits.
  On the Kaggle archive, pairs up to 12 bits apart are the same slice re-saved with other
  brightness, contrast or compression (checked by eye on samples of every distance band);
  from about 16 bits on, adjacent slices of one scan start to appear, which are different
  images. 12 of 256 bits (under 5%) keeps near-duplicates to "the same picture".
* Duplicates are grouped by connected components of the "exact or near" relation, so every
  copy of a picture is in one group even when copies differ from each other a little more.
* Candidate pairs come from the pigeonhole principle: split the hash into ``d + 1`` blocks;
  two hashes at most ``d`` bits apart agree exactly on at least one block, so bucketing by each
  block finds every pair without comparing all n^2 pairs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from entropy_ft.data.format import SPLITS

NEAR_MAX_DISTANCE = 12
DUPLICATE_POLICIES = ("report", "drop", "fail")  # what --duplicates does with groups that cross splits


def near_pairs(hashes: np.ndarray, max_distance: int = NEAR_MAX_DISTANCE) -> np.ndarray:
    """All index pairs (i < j) whose packed hashes (n x bytes, uint8) differ in at most ``max_distance`` bits."""
    n = len(hashes)
    if n < 2:
        return np.empty((0, 2), np.int64)
    bits = np.unpackbits(hashes, axis=1)
    found = []
    for block in np.array_split(np.arange(bits.shape[1]), max_distance + 1):
        keys = bits[:, block].astype(np.int64) @ (np.int64(1) << np.arange(len(block), dtype=np.int64))
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            members = np.sort(order[s:e])
            i, j = np.triu_indices(len(members), 1)
            found.append(np.stack([members[i], members[j]], axis=1))
    if not found:
        return np.empty((0, 2), np.int64)
    pairs = np.unique(np.concatenate(found), axis=0)
    distance = np.unpackbits(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]], axis=1).sum(axis=1)
    return pairs[distance <= max_distance]


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component id per item of the graph with these edges (singletons get their own id)."""
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@dataclass
class Group:
    kind: str  # "exact" (identical pixels) or "near" (a component with at least two distinct pixel hashes)
    members: list[int]  # item indices, sorted


def find_groups(
    pixel_shas: list[str], phashes: np.ndarray, max_distance: int = NEAR_MAX_DISTANCE
) -> tuple[list[Group], np.ndarray]:
    """Exact and near groups of items, and the component id of every item (for group-aware splitting)."""
    n = len(pixel_shas)
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, sha in enumerate(pixel_shas):
        by_sha[sha].append(i)
    # identical pixels are joined even if hashes differ
    exact_pairs = [(g[0], j) for g in by_sha.values() for j in g[1:]]
    pairs = np.concatenate([near_pairs(phashes, max_distance), np.array(exact_pairs, np.int64).reshape(-1, 2)])
    comp = components(n, pairs)
    groups = [Group("exact", g) for g in by_sha.values() if len(g) > 1]
    groups += [Group("near", g) for g in component_members(comp) if len({pixel_shas[i] for i in g}) > 1]
    groups.sort(key=lambda g: (g.kind, g.members))
    return groups, comp


def component_members(comp: np.ndarray) -> list[list[int]]:
    """Members of every component with more than one item, each sorted, in order of first member."""
    by_comp: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(comp):
        by_comp[int(c)].append(i)
    return sorted((m for m in by_comp.values() if len(m) > 1), key=lambda m: m[0])


def drop_plan(comps: list[list[int]], split_of: list[str], class_of: list[str], name_of: list[str]) -> dict[int, str]:
    """Items ``--duplicates drop`` removes, with the reason.

    In each group of copies, only the copies in the earliest split of train, val, test are
    kept, and of those only the first: val and test lose every image that is also in train
    (and test every image also in val), and each split is deduplicated. A group whose copies
    carry different labels is removed whole, because no copy's label can be trusted.
    """
    removed: dict[int, str] = {}
    rank = {s: k for k, s in enumerate(SPLITS)}
    for members in comps:
        classes = sorted({class_of[i] for i in members})
        if len(classes) > 1:
            for i in members:
                removed[i] = f"label conflict: the same image is labelled {', '.join(classes)}"
            continue
        keep = min(members, key=lambda i: (rank[split_of[i]], i))
        for i in members:
            if i != keep:
                where = f"within {split_of[i]}" if split_of[i] == split_of[keep] else f"{split_of[keep]} has it"
                removed[i] = f"duplicate of {name_of[keep]} ({where})"
    return removed

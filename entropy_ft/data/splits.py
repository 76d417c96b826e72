"""Split assignment that stays put when the data grows: by content, not by position in a shuffle.

Recurring retraining compares each new model with the champion on the new test split; that is
only fair if no image the champion trained on has moved into it. A seeded permutation of the
pool cannot promise that (add one image and every position shifts), so each image gets a
position ``u`` in [0, 1) from the sha256 of ``seed`` and its pixel hash, and fixed thresholds on
``u`` give its own split:

* sources without a test folder: ``u < test`` is test, the next ``val x (1 - test)`` is val;
* sources with one (Kaggle's Testing/): ``u < val`` is val, the rest train.

An image's split then depends on its own content and the fractions only. Per-class shares are
the fractions in expectation (binomial spread, about 1 point at a thousand images a class).

A small class can draw no val or no test unit at all (12 units: about 1 time in 5 for val), so
``content-hash-v2`` adds a reserve per class (:func:`_reserve`): the smallest-position unit goes
to test, then to val, where the thresholds drew none. New units can only take a reserve over
or make it unnecessary, so an old unit leaves a reserve only toward train. A class the reserve
cannot fill is ingest's to refuse.

Copies of one image (exact or near duplicates, see :mod:`.dedup`) and the images of one patient
(when a patient key is known) form a unit that is assigned whole, so assignment never creates
leakage of its own. A patient's images all take the position of the (salted, hashed) patient
key, so they draw one split together, week after week. A unit goes where its most train-ward
member's own split says (train before val before test): adding a member can move a unit toward
train, never toward test. So even without the earlier dataset, no image a champion trained or
was validated on can land in a later test split, except where a reserve is in play: a new image
that joins an old unit can pull a class's only test or val unit toward train, and the reserve
then takes another old unit (``--extends`` rules that out). Given the earlier dataset (``previous``), old
images keep their recorded split exactly, and new members follow the old members' (most
train-ward) split, so nothing old moves.

An old image is known by its pixel hash *and* its place in its source (the path below the
source's name), not by its pixels alone: exact copies share a pixel hash, and an earlier
dataset can hold copies of one image in several splits (Kaggle's Training/ and Testing/ both
hold some), so the hash alone cannot say which split a given copy had. A file whose place is new
but whose pixels the earlier dataset held in one split only (a renamed or moved file) keeps that
split too.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from entropy_ft.data.dedup import components

RULE = "content-hash-v2"  # recorded in the manifest
EXTENDABLE = ("content-hash-v1", RULE)  # rules whose datasets --extends can keep (v2 only adds the reserve)
TOWARD_TEST = ("train", "val", "test")  # a unit takes the first of its members' own splits in this order


def position(key: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on ``seed`` and ``key`` (a pixel sha256)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def units(duplicate_group: np.ndarray, patient_of: Sequence[str | None]) -> np.ndarray:
    """The units assigned together: images joined by a duplicate group or by a patient key.

    One patient's slices in train and test leak anatomy even when no two slices are copies, so
    a patient's images are one unit, and a copy of one of them joins that unit too."""
    first: dict[tuple[str, object], int] = {}
    pairs = []
    for i, (group, patient) in enumerate(zip(duplicate_group, patient_of)):
        for key in (("group", int(group)), ("patient", patient)):
            if key[1] is None:
                continue
            if key in first:
                pairs.append((first[key], i))
            else:
                first[key] = i
    return components(len(patient_of), np.array(pairs, np.int64).reshape(-1, 2))


def split_at(u: float, carve_test: bool, val_fraction: float, test_fraction: float) -> str:
    """The split of position ``u``: test, val or train by fixed thresholds."""
    if carve_test:
        if u < test_fraction:
            return "test"
        return "val" if u < test_fraction + val_fraction * (1 - test_fraction) else "train"
    return "val" if u < val_fraction else "train"


@dataclass(frozen=True)
class Assignment:
    """The split of every item, and how many kept the split an earlier dataset gave them."""

    split_of: list[str]
    kept_from_previous: int  # items the previous dataset had (same pixels, same place), in the split it had them
    followed_previous: int  # new items that took an old split: their pixels', or that of the old unit they joined
    reserved: list[tuple[str, str]]  # (class, split): a class that drew no unit for that split got its reserve


@dataclass
class Drawn:
    """A unit whose split this run draws: its free members, its position (the largest of theirs), whether
    test is carved for it, and its class (the most common among its members)."""

    free: list[int]
    key: float
    carve: bool
    class_name: str


def _reserve(drawn: list[Drawn], split_of: list[str], class_of: Sequence[str]) -> list[tuple[str, str]]:
    """Per class, a unit for test and for val where the thresholds drew none: the drawn unit with the
    smallest position (for test, among those whose test is carved) moves there, as long as the class
    keeps enough units for the other splits (3 for test, 2 for val). Taking the smallest position keeps
    the v1 guarantee for new units: they can only take the reserve over (a smaller position) or make it
    unnecessary (a drawn split of their own), so an old unit only ever leaves a reserve, toward train."""
    items_of: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(class_of):
        items_of[name].append(i)
    by_class: dict[str, list[Drawn]] = defaultdict(list)
    for unit in sorted(drawn, key=lambda u: u.key):
        by_class[unit.class_name].append(unit)
    reserved = []
    for name, units in sorted(by_class.items()):
        for split, needed in (("test", 3), ("val", 2)):
            pool = [u for u in units if split_of[u.free[0]] != "test" and (u.carve or split == "val")]
            if split in {split_of[i] for i in items_of[name]} or len(pool) < needed:
                continue
            for i in pool[0].free:
                split_of[i] = split
            reserved.append((name, split))
    return reserved


def assign(
    keys: Sequence[str],
    fixed: Sequence[str | None],
    unit_of: np.ndarray,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    previous: Mapping[tuple[str, str], str] | None = None,
    places: Sequence[str] | None = None,
    patient_of: Sequence[str | None] | None = None,
    class_of: Sequence[str] | None = None,
) -> Assignment:
    """Split per item.

    ``keys`` are pixel hashes; ``fixed`` is what the source's layout says ("test" for a test
    folder, "train" for the training folder of a source that has a test folder, None where test
    is carved); ``unit_of`` is the unit id per item (:func:`units`); ``previous`` maps (pixel hash,
    place) of an earlier dataset's images to their split, and ``places`` gives each item's place
    (default: its key); ``patient_of`` the (hashed) patient key per item, whose position replaces
    the image's own, so all of a patient's slices, this week's and next week's, draw the same
    split; ``class_of`` the class per item, for the reserve (:func:`_reserve`; default: one class).
    A test folder's images are always test.
    """
    previous = previous or {}
    places = keys if places is None else places
    splits_of_key: dict[str, set[str]] = defaultdict(set)
    for (key, _), split in previous.items():
        splits_of_key[key].add(split)

    def old_split(i: int) -> str | None:
        """The split the earlier dataset gave this image: by its place, else by pixels held in one split only
        (a test split only where the layout allows it: a new file in a training folder that copies an old
        test image is not a test image)."""
        if (keys[i], places[i]) in previous:
            return previous[(keys[i], places[i])]
        held = splits_of_key.get(keys[i], set()) - ({"test"} if fixed[i] == "train" else set())
        return next(iter(held)) if len(held) == 1 else None

    anchor = [p or k for p, k in zip(patient_of or [None] * len(keys), keys)]
    class_of = class_of or [""] * len(keys)
    split_of: list[str] = [""] * len(keys)
    members_of: dict[int, list[int]] = defaultdict(list)
    for i in range(len(keys)):
        members_of[int(unit_of[i])].append(i)
    drawn: list[Drawn] = []  # units whose split this run draws (no old member decides it)
    from_old: set[int] = set()  # new files whose split the earlier dataset decided
    for members in members_of.values():
        free = [i for i in members if fixed[i] != "test"]
        for i in members:
            if fixed[i] == "test":
                split_of[i] = "test"
        if not free:
            continue
        recorded = {i: old_split(i) for i in free}
        if old := [split for split in recorded.values() if split is not None]:
            group_split = min(old, key=TOWARD_TEST.index)
            for i in free:
                split_of[i] = recorded[i] or group_split
                from_old.add(i)
            continue
        # split_at is monotone in u (larger is more train-ward), so the most train-ward member's own split
        # is the split of the largest position
        key = max(position(anchor[i], seed) for i in free)
        carve = all(fixed[i] is None for i in free)
        counts = Counter(class_of[i] for i in members)
        drawn.append(Drawn(free, key, carve, max(sorted(counts), key=counts.__getitem__)))
        for i in free:
            split_of[i] = split_at(key, carve, val_fraction, test_fraction)
    reserved = _reserve(drawn, split_of, class_of)
    known = [(keys[i], places[i]) in previous for i in range(len(keys))]
    kept = sum(k and split_of[i] == previous[(keys[i], places[i])] for i, k in enumerate(known))
    followed = sum(not known[i] for i in from_old)
    return Assignment(split_of, kept, followed, reserved)

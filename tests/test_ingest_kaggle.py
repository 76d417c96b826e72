"""The real Kaggle archive: a stratified subset with real cross-split duplicates, ingested end to end."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter, defaultdict

import numpy as np
from imagefiles import make_zip
from PIL import Image

from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.steps import ingest

PER_CLASS_AND_SPLIT = 20
REAL_CROSS_SPLIT_GROUPS = 5


def pick_subset(archive: zipfile.ZipFile, cross_split_groups: int = REAL_CROSS_SPLIT_GROUPS) -> list[str]:
    """About 20 files per class and split, evenly spread, plus the first ``cross_split_groups`` real
    cross-split duplicate groups (found here by file bytes, which is fast) and the archive's one
    .ipynb_checkpoints file."""
    names = sorted(n for n in archive.namelist() if not n.endswith("/"))
    by_bytes: dict[str, list[str]] = defaultdict(list)
    for n in names:
        by_bytes[hashlib.sha256(archive.read(n)).hexdigest()].append(n)
    crossing = sorted(g for g in by_bytes.values() if len({n.split("/")[0] for n in g}) > 1)
    chosen = {n for g in crossing[:cross_split_groups] for n in g}
    chosen |= {n for n in names if ".ipynb_checkpoints" in n}
    per_folder: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n in names:
        split, cls, *rest = n.split("/")
        if len(rest) == 1:
            per_folder[(split, cls)].append(n)
    for files in per_folder.values():
        chosen |= set(files[:: len(files) // PER_CLASS_AND_SPLIT][:PER_CLASS_AND_SPLIT])
    return sorted(chosen)


def cross_split_exact_groups(archive: zipfile.ZipFile, names: list[str]) -> set[frozenset[str]]:
    """Counted independently of the ingest code: sha256 of the decoded pixels as Pillow returns them."""
    groups: dict[str, set[str]] = defaultdict(set)
    for n in names:
        if ".ipynb_checkpoints" in n:
            continue
        pixels = np.asarray(Image.open(io.BytesIO(archive.read(n))))
        groups[hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()].add(n)
    return {frozenset(g) for g in groups.values() if len({n.split("/")[0] for n in g}) > 1}


def test_kaggle_subset_counts_and_cross_split_duplicates(kaggle_zip, tmp_path):
    with zipfile.ZipFile(kaggle_zip) as archive:
        names = pick_subset(archive)
        subset = make_zip(tmp_path / "kaggle-subset.zip", {n: archive.read(n) for n in names})
        expected_groups = cross_split_exact_groups(archive, names)
    assert len(expected_groups) >= REAL_CROSS_SPLIT_GROUPS

    out = tmp_path / "ds"
    summary = ingest.run(ingest.Config(sources=(str(subset),), out=str(out), image_size=32, workers=2))
    manifest = load_manifest(out)

    assert manifest.sources[0]["layout"] == "kaggle"
    assert manifest.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    in_archive = Counter(tuple(n.split("/")[:2]) for n in names if ".ipynb_checkpoints" not in n)
    for cls in manifest.classes:
        counts = manifest.counts
        assert counts["train"][cls] + counts["val"][cls] == in_archive[("Training", cls)]
        assert counts["test"][cls] == in_archive[("Testing", cls)]
        assert counts["val"][cls] > 0
    assert summary["images"] == sum(in_archive.values())
    assert [e["kind"] for e in manifest.quarantine] == ["hidden"]
    assert len(read_split(out, "test")) == sum(v for (split, _), v in in_archive.items() if split == "Testing")

    prefix = "kaggle-subset.zip/"
    found = {
        frozenset(m["source"].removeprefix(prefix) for m in g["members"])
        for g in manifest.duplicates["groups"]
        if g["kind"] == "exact" and g["cross_split"]
    }
    assert found == expected_groups
    assert summary["duplicates"]["cross_split_exact_groups"] == len(expected_groups)

"""External validation: a trained model scored on data from somewhere else.

A test split drawn from the training source shares its scanners, protocols and often its
patients; a reviewer asks how the model does on data it has never seen. Three things make such a
score honest:

* classes are matched by name through the same normalisation ingest uses
  (:func:`entropy_ft.data.layouts.canonical_class`: ``no_tumor``, ``Glioma Tumour`` ...), and
  images of classes the model does not know are counted and left out, not forced into a class;
* "external" must mean unseen: every external image is compared with the model's training
  Dataset, exact copies by the sha256 of their 8-bit pixels and near copies by pHash within
  :data:`entropy_ft.data.dedup.NEAR_MAX_DISTANCE` bits, and the figures on the unseen images
  alone are reported beside those on all of them;
* every split of the external data is scored: none of it was used for training or model
  selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from entropy_ft.data.dedup import NEAR_MAX_DISTANCE, near_pairs
from entropy_ft.data.format import SPLITS, load_manifest, read_split
from entropy_ft.data.layouts import canonical_class
from entropy_ft.data.loader import ParquetImages
from entropy_ft.data.preprocess import perceptual_hash


def class_mapping(external: Sequence[str], model: Sequence[str]) -> dict[str, str | None]:
    """Each external class -> the model's class of the same canonical name, or None when the model has none."""
    known = {canonical_class(name, {}): name for name in model}
    return {name: known.get(canonical_class(name, {})) for name in external}


def training_matches(train_shas: Sequence[str], train_phashes: np.ndarray, train_splits: Sequence[str],
                     shas: Sequence[str], phashes: np.ndarray,
                     max_distance: int = NEAR_MAX_DISTANCE) -> list[tuple[str, str] | None]:
    """Per external image: None when no training image is a copy of it, else (``exact`` or ``near``,
    the earliest split of train, val, test that holds a copy). Exact copies (same pixel sha256) win
    over near ones (pHashes at most ``max_distance`` bits apart)."""
    rank = {s: k for k, s in enumerate(SPLITS)}
    exact: dict[str, str] = {}
    for sha, split in zip(train_shas, train_splits):
        if sha not in exact or rank[split] < rank[exact[sha]]:
            exact[sha] = split
    n = len(train_shas)
    near: dict[int, str] = {}
    if n and len(shas):
        pairs = near_pairs(np.concatenate([np.asarray(train_phashes), np.asarray(phashes)]), max_distance)
        for i, j in pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]:
            k, split = int(j) - n, train_splits[int(i)]
            if k not in near or rank[split] < rank[near[k]]:
                near[k] = split
    return [("exact", exact[sha]) if sha in exact else ("near", near[k]) if k in near else None
            for k, sha in enumerate(shas)]


def duplicate_summary(matches: Sequence[tuple[str, str] | None]) -> dict:
    """Counts for the report: exact and near copies of training images, and by the split they are in."""
    found = [m for m in matches if m is not None]
    return {"images": len(matches), "duplicates": len(found),
            "exact": sum(kind == "exact" for kind, _ in found), "near": sum(kind == "near" for kind, _ in found),
            "by_split": {s: sum(split == s for _, split in found) for s in SPLITS}}


class MappedImages(Dataset):
    """Every split of a Dataset, only the images whose class the model knows, labelled with the
    model's class index: ``(uint8 3xHxW at image_size, label)`` like
    :class:`~entropy_ft.data.loader.ParquetImages`, plus each kept row's ``sources`` and
    ``positions`` (its row in the splits taken in train, val, test order, as :func:`dataset_hashes`
    lists them)."""

    def __init__(self, root: str | Path, mapping: Mapping[str, str | None], model_classes: Sequence[str],
                 image_size: int) -> None:
        classes = load_manifest(root).classes
        index = {name: k for k, name in enumerate(model_classes)}
        self._parts, self._rows, labels, self.sources, self.positions = [], [], [], [], []
        offset = 0
        for split in SPLITS:
            part = ParquetImages(root, split, image_size=image_size)
            sources = read_split(root, split, columns=["source"]).column("source").to_pylist()
            for i, label in enumerate(part.labels):
                target = mapping.get(classes[label])
                if target is not None:
                    self._rows.append((len(self._parts), i))
                    labels.append(index[target])
                    self.sources.append(sources[i])
                    self.positions.append(offset + i)
            self._parts.append(part)
            offset += len(part)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def pixels(self, k: int) -> torch.Tensor:
        part, i = self._rows[k]
        return self._parts[part].pixels(i)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.pixels(k), int(self.labels[k])


def dataset_hashes(root: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Pixel sha256, pHash (n x 32 bytes, of the stored pixels, as ingest computes it) and split of every
    image of a Dataset, splits in train, val, test order."""
    shas, hashes, splits = [], [], []
    for split in SPLITS:
        part = ParquetImages(root, split)
        shas += read_split(root, split, columns=["pixel_sha256"]).column("pixel_sha256").to_pylist()
        for i in range(len(part)):
            pixels = part.stored(i).permute(1, 2, 0).numpy()
            hashes.append(np.frombuffer(perceptual_hash(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels),
                                        np.uint8))
        splits += [split] * len(part)
    return shas, np.array(hashes, np.uint8).reshape(-1, 32), splits

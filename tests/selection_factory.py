"""selection.json documents for the fine-tuning tests, built from models.py alone (not from
the selection step), so these tests pin the file format rather than one strategy's code."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from entropy_ft.model import factory as models

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def pick_layers(arch: str, strategy: str) -> list[str]:
    """``full``: every conv; ``head``: none; ``alternate``: every second conv, stem excluded
    (an entropy-like partial selection that leaves a frozen prefix)."""
    model, _ = models.build_model(arch, len(CLASSES), "none")
    convs = models.conv_layers(model, arch)
    return {"full": convs, "head": [], "alternate": convs[1::2]}[strategy]


def selection_doc(arch: str, strategy: str, classes: list[str] = CLASSES) -> dict:
    return copy.deepcopy(_selection_doc(arch, strategy, tuple(classes)))


@functools.lru_cache(maxsize=None)
def _selection_doc(arch: str, strategy: str, classes: tuple[str, ...]) -> dict:
    classes = list(classes)
    model, weights = models.build_model(arch, len(classes), "none")
    layers = pick_layers(arch, strategy)
    trainable = models.trainable_module_names(model, arch, layers)
    full = models.count_trainable(model, models.trainable_module_names(model, arch, models.conv_layers(model, arch)))
    trainable_params = models.count_trainable(model, trainable)
    return {
        "schema_version": 1,
        "arch": arch,
        **weights.as_dict(),
        "num_classes": len(classes),
        "classes": classes,
        "strategy": strategy,
        "rule": None,
        "seed": 0,
        "layers": layers,
        "trainable_modules": trainable,
        "trainable_params": trainable_params,
        "total_params": models.count_params(model),
        "full_params": full,
        "reduction_vs_full": 1 - trainable_params / full,
        "profile_sha256": None,
    }


def write_selection(path: Path, arch: str, strategy: str, classes: list[str] = CLASSES) -> Path:
    path.write_text(json.dumps(selection_doc(arch, strategy, classes)))
    return path

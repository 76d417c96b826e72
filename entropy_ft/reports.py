"""Markdown summaries for the KFP UI: short tables a reviewer reads without opening files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from entropy_ft.artifacts import DatasetManifest


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def dataset_markdown(manifest: DatasetManifest) -> str:
    """Images per split and class, duplicates and quarantine of a Dataset manifest."""
    classes = manifest.classes
    rows = [[split, *(manifest.counts[split].get(c, 0) for c in classes), manifest.totals[split]]
            for split in ("train", "val", "test")]
    text = f"# Dataset\n\n{manifest.image_size} px, {manifest.image_encoding}\n\n"
    text += md_table(["split", *classes, "total"], rows)
    dup = manifest.duplicates
    summary = dup.get("summary") or {}
    if summary:
        text += f"\n## Duplicates (policy: {dup.get('policy', 'report')})\n\n"
        text += md_table(["finding", "count"], [[k, v] for k, v in summary.items()])
    quarantine = manifest.quarantine
    text += f"\n## Quarantine\n\n{len(quarantine)} file(s) skipped\n"
    if quarantine:
        text += "\n" + md_table(["file", "reason"], [[q.get("file"), q.get("reason")] for q in quarantine[:50]])
    return text


def registration_markdown(summary: dict) -> str:
    """What the register step decided, for the KFP UI."""
    rows = [[k, summary[k]] for k in sorted(summary) if not isinstance(summary[k], (dict, list))]
    return "# Model registration\n\n" + md_table(["field", "value"], rows)


def flatten_numbers(values: Mapping, prefix: str = "") -> dict[str, float]:
    """Finite numbers from a (nested) mapping, keys joined with ``_``; everything else dropped.

    What a step's summary or metrics dict becomes as MLflow or KFP metrics."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out

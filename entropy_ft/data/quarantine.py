"""Files that ingestion skipped, and why: nothing bad in a source crashes the run or vanishes unreported.

Each entry has a short ``kind`` (counted in the summary line) and a ``reason`` a person can act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# kinds, in the order the summary lists them
HIDDEN = "hidden"  # dot-files and dot-folders, __MACOSX, .ipynb_checkpoints
NOT_IMAGE = "not-image"  # extension is not an image format
NOT_A_FILE = "not-a-file"  # links, devices, oversized or encrypted members
OUTSIDE_LAYOUT = "outside-layout"  # an image where the layout has no class folder or split for it
EMPTY = "empty"  # zero bytes
UNREADABLE = "unreadable"  # not decodable, truncated, or the read itself failed
BOMB = "decompression-bomb"  # more pixels than the limit
LABEL_CONFLICT = "label-conflict"  # the file name's label disagrees with its folder
KINDS = (HIDDEN, NOT_IMAGE, NOT_A_FILE, OUTSIDE_LAYOUT, EMPTY, UNREADABLE, BOMB, LABEL_CONFLICT)


@dataclass(frozen=True, order=True)
class Quarantined:
    file: str  # "<source name>/<path inside the source>"
    kind: str
    reason: str

    def to_json(self) -> dict:
        return {"file": self.file, "kind": self.kind, "reason": self.reason}


def counts(entries: Iterable[Quarantined]) -> dict[str, int]:
    """Entries per kind, only the kinds that occur, in KINDS order."""
    found = Counter(e.kind for e in entries)
    return {k: found[k] for k in KINDS if found[k]}

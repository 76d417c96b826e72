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
DICOM_TRUNCATED = "dicom-truncated"  # a DICOM file cut short (header or pixel data)
DICOM_UNSUPPORTED = "dicom-unsupported-syntax"  # a transfer syntax no installed decoder reads
DICOM_NO_PIXELS = "dicom-no-pixel-data"  # a DICOM object without an image (report, DICOMDIR, ...)
UNLABELLED = "unlabelled"  # no row of the --labels file names it
KINDS = (HIDDEN, NOT_IMAGE, NOT_A_FILE, OUTSIDE_LAYOUT, EMPTY, UNREADABLE, BOMB, LABEL_CONFLICT,
         DICOM_TRUNCATED, DICOM_UNSUPPORTED, DICOM_NO_PIXELS, UNLABELLED)


class BadImage(Exception):
    """A file that cannot become an image; ``kind`` is a quarantine kind, ``reason`` what a person can act on."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


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

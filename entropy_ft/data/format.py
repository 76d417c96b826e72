"""The Dataset artifact: Parquet shards per split plus ``manifest.json``
(:class:`entropy_ft.artifacts.DatasetManifest`).

One row per image. ``image`` holds the preprocessed pixels as raw row-major uint8
(``height`` x ``width`` x ``channels``, channels 1 for grayscale MRI and 3 for colour):
raw pixels cost no decode in the training loader and zstd keeps the shards small.
Shards are written with fixed settings and sorted input, so the same input gives
byte-identical files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entropy_ft.artifacts import DatasetManifest
from entropy_ft.errors import UserError
from entropy_ft.storage import sha256_file

SPLITS = ("train", "val", "test")
IMAGE_ENCODING = "raw-uint8-hwc"
SHARD_MAX_BYTES = 256 * 1024 * 1024
ROW_GROUP_ROWS = 512

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int8()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("sha256", pa.string()),
        ("source", pa.string()),
        ("pixel_sha256", pa.string()),
        ("patient", pa.string()),
    ]
)


@dataclass
class ImageRecord:
    """One preprocessed image and where it came from."""

    pixels: np.ndarray  # uint8, (H, W) grayscale or (H, W, 3)
    label: int
    class_name: str
    sha256: str  # of the original file bytes
    source: str  # original path inside the source
    pixel_sha256: str  # of the decoded pixels before resizing: the image's identity for splits and duplicates
    patient: str | None = None  # salted hash of the patient key (entropy_ft.data.patients); None when unknown


@dataclass
class _SplitShards:
    rows: list[ImageRecord] = field(default_factory=list)
    bytes: int = 0
    index: int = 0


class DatasetWriter:
    """Stream records into shards under ``root/<split>/part-NNNNN.parquet``.

    Memory holds at most one shard per split, so ingestion does not grow with the dataset.
    ``close`` writes ``manifest.json`` last: a directory without it is not a dataset.
    """

    def __init__(self, root: Path, classes: list[str], image_size: int, preprocessing: dict,
                 shard_max_bytes: int = SHARD_MAX_BYTES) -> None:
        self.root = Path(root)
        self.classes = list(classes)
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.shard_max_bytes = shard_max_bytes
        self._splits: dict[str, _SplitShards] = {s: _SplitShards() for s in SPLITS}
        self._shards: list[dict] = []
        self._counts: dict[str, Counter] = {s: Counter() for s in SPLITS}

    def add(self, split: str, record: ImageRecord) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        pixels = np.ascontiguousarray(record.pixels, dtype=np.uint8)
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
            raise ValueError(f"{record.source}: pixels must be HxW or HxWx3, got {pixels.shape}")
        record.pixels = pixels
        state = self._splits[split]
        state.rows.append(record)
        state.bytes += pixels.nbytes
        self._counts[split][record.class_name] += 1
        if state.bytes >= self.shard_max_bytes:
            self._flush(split)

    def flush(self, split: str) -> None:
        """Write out the rows ``split`` holds now; a caller that adds split by split calls it when a
        split is done, so memory holds one partial shard instead of one per split."""
        self._flush(split)

    def _flush(self, split: str) -> None:
        state = self._splits[split]
        if not state.rows:
            return
        rows = state.rows
        table = pa.table(
            {
                "image": pa.array([r.pixels.tobytes() for r in rows], pa.binary()),
                "height": pa.array([r.pixels.shape[0] for r in rows], pa.int32()),
                "width": pa.array([r.pixels.shape[1] for r in rows], pa.int32()),
                "channels": pa.array([1 if r.pixels.ndim == 2 else r.pixels.shape[2] for r in rows], pa.int8()),
                "label": pa.array([r.label for r in rows], pa.int32()),
                "class_name": pa.array([r.class_name for r in rows], pa.string()),
                "sha256": pa.array([r.sha256 for r in rows], pa.string()),
                "source": pa.array([r.source for r in rows], pa.string()),
                "pixel_sha256": pa.array([r.pixel_sha256 for r in rows], pa.string()),
                "patient": pa.array([r.patient for r in rows], pa.string()),
            },
            schema=SCHEMA,
        )
        rel = f"{split}/part-{state.index:05d}.parquet"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=False)
        self._shards.append({"path": rel, "split": split, "rows": len(rows), "sha256": sha256_file(path)})
        state.rows, state.bytes = [], 0
        state.index += 1

    def close(self, **sections: object) -> DatasetManifest:
        """Flush every split and write the manifest; ``sections`` fill its duplicates, quarantine and sources."""
        for split in SPLITS:
            self._flush(split)
        manifest = DatasetManifest(
            classes=self.classes,
            image_size=self.image_size,
            image_encoding=IMAGE_ENCODING,
            preprocessing=self.preprocessing,
            counts={s: {c: self._counts[s].get(c, 0) for c in self.classes} for s in SPLITS},
            totals={s: sum(self._counts[s].values()) for s in SPLITS},
            shards=self._shards,
            **sections,
        )
        manifest.write(str(self.root))
        return manifest


def load_manifest(root: str | Path) -> DatasetManifest:
    """Read and check a dataset's manifest; a missing or foreign one is a UserError."""
    path = Path(root) / DatasetManifest.FILE
    if not path.is_file():
        raise UserError(f"{root}: not a dataset (no {DatasetManifest.FILE}); create one with `entropy-ft ingest`")
    manifest = DatasetManifest.read(str(path))
    if manifest.image_encoding != IMAGE_ENCODING:
        raise UserError(f"{path}: not an entropy-ft dataset manifest (encoding {manifest.image_encoding!r})")
    return manifest


def manifest_sha256(root: str | Path) -> str:
    """Identity of a dataset: the sha256 of its manifest, which lists every shard's sha256."""
    return sha256_file(Path(root) / DatasetManifest.FILE)


def read_split(root: str | Path, split: str, columns: Iterable[str] | None = None) -> pa.Table:
    """All rows of one split as an Arrow table (shards in manifest order)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    manifest = load_manifest(root)
    shards = [s for s in manifest.shards if s["split"] == split]
    if not shards:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(list(columns))
    for shard in shards:
        _check_shard(Path(root), shard)
    tables = [pq.read_table(Path(root) / s["path"], columns=list(columns) if columns else None) for s in shards]
    return pa.concat_tables(tables)


_checked: set[tuple[str, int, int, str]] = set()  # (path, size, mtime_ns, sha256) already hashed by this process


def _check_shard(root: Path, shard: dict) -> None:
    """A shard is read only if it is the file the manifest lists (its sha256): a truncated upload, or an
    earlier run's shard of the same name left beside a newer manifest, is refused, not read as data."""
    path = root / shard["path"]
    if not path.is_file():
        raise UserError(f"{root}: shard {shard['path']} that the manifest lists is missing; ingest again")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, shard["sha256"])
    if key in _checked:
        return
    if sha256_file(path) != shard["sha256"]:
        raise UserError(f"{root}: shard {shard['path']} is not the one the manifest lists (its sha256 differs: "
                        "truncated, or left by another run); ingest again")
    _checked.add(key)

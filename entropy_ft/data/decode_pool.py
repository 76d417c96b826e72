"""The first pass of ingestion: decode, preprocess and hash every image on every core, in bounded memory.

The main process reads file bytes from the sources and hands them in small batches to a
process pool; at most ``2 x workers`` batches are in flight, so memory does not grow with the
dataset. Finished pixels are compressed (LZ4) in the worker and appended to a spill file; only
hashes and offsets stay in memory. The second pass reads the spill back in the final sorted
order, which is what makes the shards byte-identical whatever order the pool finished in.
(Splits, duplicate groups and ``--duplicates drop`` need every hash before the first row is
written, so one pass cannot both decide and write.)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from entropy_ft.data.dicom import DicomMeta
from entropy_ft.data.preprocess import BadImage, Settings, process
from entropy_ft.data.quarantine import UNREADABLE
from entropy_ft.logs import progress_bar

BATCH_IMAGES = 32
BATCH_BYTES = 16 << 20
SPILL_CODEC = "lz4"  # fastest to write and read back; the spill is temporary


class Read(NamedTuple):
    """One file for the pool: its index, its bytes (None when the read failed, with why), and its path,
    which tells a ``.dcm`` or extension-less file from other images."""

    index: int
    data: bytes | None
    error: str | None
    path: str


@dataclass(frozen=True)
class Decoded:
    """One image ready for the second pass: a whole file, or one frame of a multi-frame DICOM file."""

    shape: tuple[int, ...]
    offset: int  # of the compressed pixels in the spill file
    length: int
    file_sha256: str
    pixel_sha256: str
    phash: bytes


@dataclass(frozen=True)
class DecodedFile:
    """Every image one file gave, and its DICOM metadata (None for other formats)."""

    images: tuple[Decoded, ...]
    dicom: DicomMeta | None = None


@dataclass(frozen=True)
class Failed:
    kind: str  # a quarantine kind
    reason: str


class Spill:
    """An append-only file of compressed pixel blocks, read back by offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "w+b")
        self._end = 0

    def append(self, blob: bytes) -> int:
        self._fh.seek(self._end)
        self._fh.write(blob)
        offset, self._end = self._end, self._end + len(blob)
        return offset

    def pixels(self, d: Decoded) -> np.ndarray:
        self._fh.seek(d.offset)
        blob = self._fh.read(d.length)
        raw = pa.decompress(blob, int(np.prod(d.shape)), codec=SPILL_CODEC, asbytes=True)
        return np.frombuffer(raw, np.uint8).reshape(d.shape)

    def close(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def work(batch: list[Read], settings: Settings) -> list[tuple[int, tuple]]:
    """Process one batch in a worker: (index, ("ok", [(shape, blob, hashes...) per image], DICOM metadata))
    or (index, ("bad", kind, reason))."""
    out: list[tuple[int, tuple]] = []
    for index, data, read_error, path in batch:
        if data is None:
            out.append((index, ("bad", UNREADABLE, read_error or "cannot read")))
            continue
        try:
            p = process(data, settings, path)
        except BadImage as exc:
            out.append((index, ("bad", exc.kind, exc.reason)))
            continue
        images = [(i.pixels.shape, pa.compress(i.pixels.tobytes(), codec=SPILL_CODEC, asbytes=True),
                   i.file_sha256, i.pixel_sha256, i.phash) for i in p.images]
        out.append((index, ("ok", images, p.dicom)))
    return out


def _batches(reads: Iterator[Read]) -> Iterator[list[Read]]:
    batch: list[Read] = []
    size = 0
    for item in reads:
        batch.append(item)
        size += len(item.data or b"")
        if len(batch) >= BATCH_IMAGES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def decode_all(
    reads: Iterator[Read], total: int, settings: Settings, workers: int, spill: Spill
) -> dict[int, DecodedFile | Failed]:
    """Run :func:`work` over every read, on ``workers`` processes (1: in this process), spilling pixels."""
    results: dict[int, DecodedFile | Failed] = {}
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(_start_pool(workers)) if workers > 1 else None
        bar = stack.enter_context(contextlib.closing(progress_bar("decode + hash", total=total, unit="img")))

        def collect(done: list[tuple[int, tuple]]) -> None:
            for index, r in done:
                if r[0] == "ok":
                    images = tuple(Decoded(tuple(shape), spill.append(blob), len(blob), file_sha, pixel_sha, phash)
                                   for shape, blob, file_sha, pixel_sha, phash in r[1])
                    results[index] = DecodedFile(images, r[2])
                else:
                    results[index] = Failed(r[1], r[2])
            bar.update(len(done))

        if pool is None:
            for batch in _batches(reads):
                collect(work(batch, settings))
            return results
        pending: set[Future] = set()
        for batch in _batches(reads):
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    collect(f.result())
            pending.add(pool.submit(work, batch, settings))
        for f in pending:
            collect(f.result())
        return results


@contextlib.contextmanager
def _start_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers all exist before this process starts any thread of its own.

    On Linux the workers are forked: no re-import of ``__main__`` (which spawn and forkserver
    do, breaking scripts and notebooks without a main guard) and no start-up cost. Forking is
    only unsafe once other threads hold locks, so the pool is started, and every worker
    created, before the S3 reader threads or the progress bar's monitor thread exist.
    """
    method = "fork" if sys.platform == "linux" else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        list(pool.map(int, range(workers)))  # creates every worker now
        yield pool

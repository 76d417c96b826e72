"""The first pass of ingestion: decode, preprocess and hash every image on every core, in bounded memory.

The main process reads file bytes from the sources and hands them in small batches to a
process pool; at most ``2 x workers`` batches are in flight, so memory does not grow with the
dataset. Finished pixels are compressed (zstd) in the worker and appended to a spill file; only
hashes and offsets stay in memory. The second pass reads the spill back in the final sorted
order, which is what makes the shards byte-identical whatever order the pool finished in.
(Splits, duplicate groups and ``--duplicates drop`` need every hash before the first row is
written, so one pass cannot both decide and write.)
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..logs import progress_bar
from .preprocess import BadImage, Settings, process

BATCH_IMAGES = 32
BATCH_BYTES = 16 << 20
SPILL_CODEC = "zstd"


@dataclass(frozen=True)
class Decoded:
    shape: tuple[int, ...]
    offset: int  # of the compressed pixels in the spill file
    length: int
    file_sha256: str
    pixel_sha256: str
    phash: bytes


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


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def work(batch: list[tuple[int, bytes | None, str | None]], settings: Settings) -> list[tuple[int, tuple]]:
    """Process one batch in a worker: (index, ("ok", shape, blob, hashes...)) or (index, ("bad", kind, reason))."""
    out: list[tuple[int, tuple]] = []
    for index, data, read_error in batch:
        if data is None:
            out.append((index, ("bad", "unreadable", read_error or "cannot read")))
            continue
        try:
            p = process(data, settings)
        except BadImage as exc:
            out.append((index, ("bad", exc.kind, exc.reason)))
            continue
        blob = pa.compress(p.pixels.tobytes(), codec=SPILL_CODEC, asbytes=True)
        out.append((index, ("ok", p.pixels.shape, blob, p.file_sha256, p.pixel_sha256, p.phash)))
    return out


def _batches(reads: Iterator[tuple[int, bytes | None, str | None]]) -> Iterator[list]:
    batch: list = []
    size = 0
    for item in reads:
        batch.append(item)
        size += len(item[1] or b"")
        if len(batch) >= BATCH_IMAGES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def decode_all(
    reads: Iterator[tuple[int, bytes | None, str | None]], total: int, settings: Settings, workers: int, spill: Spill
) -> dict[int, Decoded | Failed]:
    """Run :func:`work` over every read, on ``workers`` processes (1: in this process), spilling pixels."""
    results: dict[int, Decoded | Failed] = {}
    bar = progress_bar("decode + hash", total=total, unit="img")

    def collect(done: list[tuple[int, tuple]]) -> None:
        for index, r in done:
            if r[0] == "ok":
                _, shape, blob, file_sha, pixel_sha, phash = r
                results[index] = Decoded(tuple(shape), spill.append(blob), len(blob), file_sha, pixel_sha, phash)
            else:
                results[index] = Failed(r[1], r[2])
        bar.update(len(done))

    try:
        if workers <= 1:
            for batch in _batches(reads):
                collect(work(batch, settings))
            return results
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["entropy_ft.data.decode_pool"])
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
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
    finally:
        bar.close()

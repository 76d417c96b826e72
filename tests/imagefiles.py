"""Image files made by the tests (no committed binaries): phantoms in any format, broken files, archives."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from entropy_ft.data import synthetic


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **options) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def phantom(index: int, cls: str, size: int = 48) -> np.ndarray:
    """A distinct grayscale slice per index (pHashes of different indices are far apart)."""
    return synthetic.phantom(index, synthetic.CLASSES.index(cls), size, seed=0)


def phantom_file(index: int, cls: str, fmt: str = "PNG", size: int = 48) -> bytes:
    return encode(phantom(index, cls, size), fmt)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels, streamed so that making it costs no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for rel, target in (links or {}).items():
            info = tarfile.TarInfo(rel)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def imagefolder(n_per_class: int, start: int = 0, split: str | None = None, fmt: str = "PNG") -> dict[str, bytes]:
    """{path: bytes} of distinct phantoms in class folders (under ``split/`` if given)."""
    files = {}
    for k, cls in enumerate(synthetic.CLASSES):
        for i in range(n_per_class):
            index = start + k * 1000 + i
            prefix = f"{split}/" if split else ""
            files[f"{prefix}{cls}/{cls[:2]}_{index:05d}.{fmt.lower()}"] = phantom_file(index, cls, fmt)
    return files

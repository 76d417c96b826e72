"""Where images come from: a folder, a ``.zip``, a ``.tar``/``.tar.gz``, or ``s3://bucket/prefix``
(a prefix of files, or one archive object).

Every source is listed and checked before anything is read or written. A member whose name
is absolute or has a ``..`` component, or a link whose target leaves the source, makes the
whole source a :class:`UserError` (zip-slip): an archive that tries this is hostile or broken,
and half-ingesting it would hide that. Members are read into memory, never extracted, so
no member name ever becomes a path on this machine.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import stat
import tarfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from entropy_ft import storage
from entropy_ft.errors import UserError, short

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header
MAX_FILE_BYTES = 1 << 30  # a single image file over 1 GiB is not an MRI slice
S3_READ_THREADS = 16  # object GETs are latency-bound; threads overlap them


@dataclass(frozen=True)
class Member:
    """One entry of a source: a file, a folder, or something listed but not readable as a file."""

    path: str  # posix path relative to the source root, normalised
    size: int = 0
    is_dir: bool = False
    problem: str | None = None  # why this entry cannot be read as an image file (link, device, too large)


@dataclass(frozen=True)
class ReadResult:
    path: str
    data: bytes | None
    error: str | None = None  # read failed (CRC error, network): quarantined, not fatal


def safe_member_path(name: str, where: str) -> str:
    """The normalised relative path of an archive member or key; absolute or ``..`` paths are refused."""
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UserError(f"{where}: member {name!r} has an absolute path; refusing the whole source (zip-slip)")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{where}: member {name!r} has a '..' component; refusing the whole source (zip-slip)")
    return "/".join(parts)


def check_link(path: str, target: str, where: str, relative_to_root: bool = False) -> None:
    """A link member must point inside the source; the check is on names, nothing is resolved on disk."""
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise UserError(f"{where}: link {path!r} points to the absolute path {target!r}; refusing the whole source")
    base = "" if relative_to_root else posixpath.dirname(path)
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../"):
        raise UserError(f"{where}: link {path!r} points outside the archive ({target!r}); refusing the whole source")


class Source(ABC):
    """A listed, checked source. ``members`` is sorted by path; ``read`` yields the wanted files' bytes."""

    def __init__(self, uri: str, name: str) -> None:
        self.uri = uri
        self.name = name  # short label used in each row's ``source`` column
        self.members: list[Member] = []

    @abstractmethod
    def read(self, paths: Iterable[str]) -> Iterator[ReadResult]:
        """Bytes of the given member paths, in whatever order reads them fastest."""

    def _set_members(self, members: list[Member]) -> None:
        seen: dict[str, Member] = {}
        for m in members:
            if m.path in seen and not m.is_dir:
                # two members normalising to one path (a/./b and a/b): read neither as the other
                seen[m.path + "\x00dup"] = Member(m.path, m.size, problem="duplicate member name in the archive")
                continue
            seen.setdefault(m.path, m)
        self.members = sorted(seen.values(), key=lambda m: (m.path, m.is_dir))


class DirSource(Source):
    """A local folder. Symbolic links are followed only when they stay inside the folder."""

    def __init__(self, uri: str, root: Path) -> None:
        super().__init__(uri, _label(uri))
        self.root = root.resolve()
        members: list[Member] = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(self.root):
                    members.append(Member(rel, problem="symbolic link pointing outside the source (not followed)"))
                    continue
                if target.is_dir():
                    members.append(Member(rel, problem="symbolic link to a folder (not followed)"))
                    continue
            if path.is_dir():
                members.append(Member(rel, is_dir=True))
            elif path.is_file():
                members.append(_sized(rel, path.stat().st_size))
            else:
                members.append(Member(rel, problem="not a regular file"))
        self._set_members(members)

    def read(self, paths: Iterable[str]) -> Iterator[ReadResult]:
        for p in paths:
            try:
                yield ReadResult(p, (self.root / p).read_bytes())
            except OSError as exc:
                yield ReadResult(p, None, f"cannot read file ({exc.strerror or exc})")


class ZipSource(Source):
    def __init__(self, uri: str, path: Path) -> None:
        super().__init__(uri, _label(uri))
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{uri}: not a readable zip archive ({exc})") from exc
        self._infos: dict[str, zipfile.ZipInfo] = {}
        members: list[Member] = []
        for info in self._zip.infolist():
            rel = safe_member_path(info.filename, uri)
            if not rel:
                continue
            if info.is_dir():
                members.append(Member(rel, is_dir=True))
            elif stat.S_ISLNK(info.external_attr >> 16):
                check_link(rel, self._zip.read(info).decode("utf-8", "replace"), uri)
                members.append(Member(rel, problem="symbolic link inside the archive (not followed)"))
            elif info.flag_bits & 0x1:
                members.append(Member(rel, problem="encrypted zip member"))
            else:
                members.append(_sized(rel, info.file_size))
                self._infos.setdefault(rel, info)
        self._set_members(members)

    def read(self, paths: Iterable[str]) -> Iterator[ReadResult]:
        for p in paths:
            try:
                yield ReadResult(p, self._zip.read(self._infos[p]))
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # CRC mismatch, truncated archive
                yield ReadResult(p, None, f"cannot read zip member ({exc})")

    def close(self) -> None:
        self._zip.close()


class TarSource(Source):
    """A tar archive, compressed or not. Reads follow archive order, so a .tar.gz is decompressed sequentially."""

    def __init__(self, uri: str, path: Path) -> None:
        super().__init__(uri, _label(uri))
        try:
            self._tar = tarfile.open(path, "r:*")
            infos = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"{uri}: not a readable tar archive ({exc})") from exc
        self._infos: dict[str, tarfile.TarInfo] = {}
        members: list[Member] = []
        for info in infos:
            rel = safe_member_path(info.name, uri)
            if not rel:
                continue
            if info.isdir():
                members.append(Member(rel, is_dir=True))
            elif info.issym() or info.islnk():
                check_link(rel, info.linkname, uri, relative_to_root=info.islnk())
                members.append(Member(rel, problem="link inside the archive (not followed)"))
            elif not info.isfile():
                members.append(Member(rel, problem="not a regular file"))
            else:
                members.append(_sized(rel, info.size))
                self._infos.setdefault(rel, info)
        self._set_members(members)

    def read(self, paths: Iterable[str]) -> Iterator[ReadResult]:
        for rel, info in sorted(((p, self._infos[p]) for p in set(paths)), key=lambda pi: pi[1].offset_data):
            try:
                fh = self._tar.extractfile(info)
                yield ReadResult(rel, fh.read() if fh else b"")
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield ReadResult(rel, None, f"cannot read tar member ({exc})")

    def close(self) -> None:
        self._tar.close()


class S3PrefixSource(Source):
    """Objects under ``s3://bucket/prefix``: listed once, read with parallel GETs and bounded memory."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, _label(uri))
        self._loc = storage.S3Location.parse(uri)
        self._client = storage.s3_client()
        prefix = self._loc.key.rstrip("/") + "/" if self._loc.key else ""
        members: list[Member] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self._loc.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = safe_member_path(obj["Key"][len(prefix):], uri)
                    if not rel:
                        continue
                    if obj["Key"].endswith("/"):
                        members.append(Member(rel, is_dir=True))
                    else:
                        members.append(_sized(rel, obj["Size"]))
        except UserError:
            raise
        except Exception as exc:  # botocore raises many kinds; all mean "cannot list"
            raise UserError(f"{uri}: cannot list S3 prefix ({short(exc)})") from exc
        self._prefix = prefix
        self._set_members(members)

    def _get(self, path: str) -> ReadResult:
        try:
            body = self._client.get_object(Bucket=self._loc.bucket, Key=self._prefix + path)["Body"].read()
            return ReadResult(path, body)
        except Exception as exc:  # a failed GET after retries quarantines the object, it does not stop the run
            return ReadResult(path, None, f"cannot read S3 object ({short(exc)})")

    def read(self, paths: Iterable[str]) -> Iterator[ReadResult]:
        pending = list(paths)
        window = S3_READ_THREADS * 4
        with ThreadPoolExecutor(S3_READ_THREADS) as pool:
            for start in range(0, len(pending), window):
                yield from pool.map(self._get, pending[start : start + window])




def _sized(rel: str, size: int) -> Member:
    if size > MAX_FILE_BYTES:
        return Member(rel, size, problem=f"file of {size} bytes is over the {MAX_FILE_BYTES}-byte limit")
    return Member(rel, size)


def _label(uri: str) -> str:
    """The last path component of a source, as rows name it (``kaggle.zip/Training/glioma/x.jpg``)."""
    if storage.is_s3(uri):
        loc = storage.S3Location.parse(uri)
        return PurePosixPath(loc.key).name if loc.key else loc.bucket
    return Path(uri).resolve().name or str(uri)


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _open_local(uri: str, path: Path) -> Source:
    if not path.exists():
        raise UserError(f"{uri}: no such file or folder")
    if path.is_dir():
        return DirSource(uri, path)
    if zipfile.is_zipfile(path):
        return ZipSource(uri, path)
    if tarfile.is_tarfile(path):
        return TarSource(uri, path)
    kind = _claimed_archive(path)
    if kind:
        raise UserError(f"{uri}: corrupt {kind} archive (truncated or damaged: it cannot be listed); "
                        "download or copy it again")
    raise UserError(f"{uri}: not a folder, .zip or .tar archive")


def _claimed_archive(path: Path) -> str | None:
    """The archive kind a file that no archive reader accepts claims to be: ``zip`` when it starts like one
    (a truncated zip loses the central directory at its end, so ``is_zipfile`` says no), else its archive
    suffix (``tar.gz``); None when it claims nothing."""
    with open(path, "rb") as fh:
        if fh.read(4) == ZIP_MAGIC:
            return "zip"
    name = path.name.lower()
    return next((suffix.lstrip(".") for suffix in ARCHIVE_SUFFIXES if name.endswith(suffix)), None)


@contextlib.contextmanager
def open_source(uri: str) -> Iterator[Source]:
    """List and check one source; archives downloaded from S3 live in a temporary file until the block ends."""
    if storage.is_s3(uri):
        loc = storage.S3Location.parse(uri)
        if _is_archive_name(loc.key) and _s3_object_exists(loc):
            with storage.local_copy(uri) as path:
                source = _open_local(uri, path)
                source.name = _label(uri)
                try:
                    yield source
                finally:
                    _close(source)
            return
        source = S3PrefixSource(uri)
    else:
        source = _open_local(uri, Path(uri))
    try:
        yield source
    finally:
        _close(source)


def _close(source: Source) -> None:
    if isinstance(source, ZipSource | TarSource):
        source.close()


def _s3_object_exists(loc: storage.S3Location) -> bool:
    try:
        storage.s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except Exception:  # 404 and friends: treat the URI as a prefix instead
        return False

"""Local paths and ``s3://bucket/key`` URIs behind one small interface.

S3 goes through boto3's own configuration (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
credentials, retries), so MinIO, Ceph and AWS work alike. Every write is atomic: a reader
never sees half a file or half an artifact directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from entropy_ft.errors import UserError, short
from entropy_ft.logs import log


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def durable_uri(uri: str) -> str:
    """The URI a later run can read an artifact at. KFP names MinIO-backed artifacts
    ``minio://bucket/key`` (and GCS ones ``gs://``); MinIO serves the same object as
    ``s3://bucket/key`` through the S3 API this module speaks."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise UserError(f"{uri}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> "S3Location":
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Location(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_client():
    """A boto3 S3 client with standard retries; endpoint and credentials from the environment."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or S3 URI."""
    if is_s3(uri):
        return str(S3Location.parse(uri).join(*parts))
    return str(Path(uri, *parts))


def read_bytes(uri: str) -> bytes:
    """Read a whole object or file; a missing one is a UserError naming it."""
    if is_s3(uri):
        loc = S3Location.parse(uri)
        try:
            return s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except Exception as exc:  # botocore raises many kinds; all mean "cannot read it"
            raise UserError(f"{uri}: cannot read from S3 ({short(exc)})") from exc
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{uri}: no such file") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{uri}: is a directory, expected a file") from exc


def read_json(uri: str) -> dict:
    import json

    try:
        return json.loads(read_bytes(uri))
    except ValueError as exc:
        raise UserError(f"{uri}: not valid JSON ({exc})") from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file atomically (temp file + rename locally; one PUT on S3)."""
    if is_s3(uri):
        loc = S3Location.parse(uri)
        s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(uri: str, obj: dict) -> None:
    import json

    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def exists(uri: str) -> bool:
    if is_s3(uri):
        loc = S3Location.parse(uri)
        client = s3_client()
        resp = client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key, MaxKeys=1)
        return resp.get("KeyCount", 0) > 0
    return Path(uri).exists()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path for reading ``uri``: the path itself, or a temporary download of an S3 file or prefix."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise UserError(f"{uri}: no such file or directory")
        yield path
        return
    loc = S3Location.parse(uri)
    client = s3_client()
    with tempfile.TemporaryDirectory(prefix="entropy-ft-") as tmp:
        keys = _list_keys(client, loc)
        if not keys:
            raise UserError(f"{uri}: nothing found at this S3 location")
        if keys == [loc.key]:
            target = Path(tmp, Path(loc.key).name)
            client.download_file(loc.bucket, loc.key, str(target))
            yield target
            return
        root = Path(tmp, "prefix")
        for key in keys:
            rel = key[len(loc.key) :].lstrip("/") if loc.key else key
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(loc.bucket, key, str(target))
        yield root


def _list_keys(client, loc: S3Location) -> list[str]:
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key == loc.key or not loc.key or key.startswith(loc.key.rstrip("/") + "/"):
                    keys.append(key)
    except Exception as exc:
        raise UserError(f"{loc}: cannot list S3 prefix ({short(exc)})") from exc
    return sorted(keys)


@contextlib.contextmanager
def output_dir(uri: str) -> Iterator[Path]:
    """A local staging directory that becomes ``uri`` only when the block succeeds.

    Locally the staged directory replaces ``uri`` by rename (an earlier run's output is
    removed only after the new one is complete); on S3 the files are uploaded, then stale
    keys under the prefix are deleted. On failure nothing at ``uri`` changes.
    """
    if is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="entropy-ft-out-") as tmp:
            yield Path(tmp)
            try:
                upload_dir(Path(tmp), uri)
            except Exception as exc:  # botocore raises many kinds, after its own retries
                raise UserError(f"{uri}: the upload to S3 failed part-way ({short(exc)}); what is there is no "
                                "complete artifact and no step will read it; run this step again") from exc
        return
    final = Path(uri).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead_writers(final)
    fd, lock_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.staging-", suffix=".lock")
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while this writer lives; the kernel drops it when it dies
        staging, trash = _beside(Path(lock_name))
        staging.mkdir(mode=0o755)
        try:
            yield staging
            if final.exists():
                trash.mkdir()
                os.replace(final, trash / "old")
                os.replace(staging, final)
            else:
                os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(trash, ignore_errors=True)
            Path(lock_name).unlink(missing_ok=True)


def _beside(lock: Path) -> tuple[Path, Path]:
    """A writer's staging directory and the directory its predecessor's artifact is moved to."""
    stem = lock.name.removesuffix(".lock")
    return lock.with_name(stem), lock.with_name(stem + ".old")


def _clear_dead_writers(final: Path) -> None:
    """Remove what killed writers of ``final`` left beside it, so reruns after SIGKILLs do not pile up
    half-written copies. A writer is dead when its lock file can be locked: the kernel releases a
    flock when its holder dies, however it dies. A live writer's files are left alone. If a writer
    died between moving the old artifact aside and moving its new one in, the old one is put back."""
    for lock_path in sorted(final.parent.glob(f".{final.name}.staging-*.lock")):
        staging, trash = _beside(lock_path)
        try:
            lock = lock_path.open("a")
        except FileNotFoundError:
            continue  # its writer finished meanwhile
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a writer at work
            if (trash / "old").exists() and not final.exists():
                os.replace(trash / "old", final)
                log.warning("%s: a writer was killed while replacing it; the earlier artifact is back", final)
            for leftover in (staging, trash):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
                    log.info("removed %s, left by a writer that was killed", leftover)
            lock_path.unlink(missing_ok=True)


def upload_dir(local: Path, uri: str) -> None:
    """Upload a directory tree under an S3 prefix so that no reader takes a half-written one for whole.

    S3 cannot rename a prefix, so the artifact's record (its top-level JSON: manifest.json,
    model.json, eval.json, ...) is the commit: an earlier record there is deleted first, the other
    files go up, the new record last, and only then are keys the tree no longer has deleted. A
    failure part-way (a dropped connection, a killed pod) leaves a prefix with no record, which
    every step refuses ("not a dataset", "no model.json"); an earlier artifact there is gone, never
    mixed with the new one. Readers also check each shard against the record's sha256.
    """
    loc = S3Location.parse(uri)
    client = s3_client()
    files = sorted(p for p in local.rglob("*") if p.is_file())
    records = [p for p in files if p.parent == local and p.suffix == ".json"]
    for path in records:
        client.delete_object(Bucket=loc.bucket, Key=loc.join(path.name).key)
    wanted = set()
    for path in [p for p in files if p not in records] + records:
        key = loc.join(path.relative_to(local).as_posix()).key
        wanted.add(key)
        client.upload_file(str(path), loc.bucket, key)
    for key in _list_keys(client, loc):
        if key not in wanted:
            client.delete_object(Bucket=loc.bucket, Key=key)

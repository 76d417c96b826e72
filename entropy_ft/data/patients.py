"""Patient keys that can group images without naming anyone.

A split that puts one patient's slices in both train and test leaks: the model recognises the
patient, not the tumour. Grouping needs a key per patient, but a PatientID (or a hospital's own
patient column) is personal data and must not reach a manifest, a shard, a log line or a
report. So every key is replaced at once by ``HMAC-SHA256(salt, key)``: equal keys give equal
hashes, and without the salt a hash cannot be tested against a guessed ID.

The hashes place a patient in a split (:mod:`.splits`), so the salt must last: with another salt
the same patients draw other splits, and an ``--extends`` dataset's patients are not found. It
comes, first found first:

1. ``ENTROPY_FT_PATIENT_SALT`` (on a cluster, from a Secret: ``pipelines/cluster.py``);
2. the salt file, ``$XDG_CONFIG_HOME/entropy-ft/patient-salt`` (``~/.config`` by default),
   created once with mode 600 and reused: outside every artifact, beside the user's other keys;
3. a random salt for this run only, which ingest warns about (a pod's home does not outlive
   the pod, so the pipelines set ``ENTROPY_FT_NO_SALT_FILE`` and never make a file there).

The salt is never written into a dataset, a log line or a report.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

SALT_ENV = "ENTROPY_FT_PATIENT_SALT"
NO_SALT_FILE_ENV = "ENTROPY_FT_NO_SALT_FILE"  # set in pods: their home is an emptyDir
RANDOM = "random, this run only"

log = logging.getLogger("entropy_ft")


@dataclass(frozen=True)
class Salt:
    """The salt for this run, and where it came from (for the manifest: never the value)."""

    value: bytes = field(repr=False)
    origin: str  # SALT_ENV, "salt file" or RANDOM

    @property
    def lasts(self) -> bool:
        return self.origin != RANDOM


def salt_file() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "entropy-ft" / "patient-salt"


def load_salt() -> Salt:
    """The salt for this run (see the module's docstring for the order); a salt file that cannot be made
    or read gives a random salt, which ingest warns about."""
    if value := os.environ.get(SALT_ENV, ""):
        return Salt(value.encode(), SALT_ENV)
    if not os.environ.get(NO_SALT_FILE_ENV):
        path = salt_file()
        try:
            return Salt(_read_or_create(path), "salt file")
        except OSError as exc:
            log.warning("patient salt file %s: %s; using a random salt", path, exc.strerror or exc)
    return Salt(secrets.token_bytes(32), RANDOM)


def _read_or_create(path: Path) -> bytes:
    """The salt in ``path``, made first if missing: written to a temporary file with mode 600 and linked
    into place, so two ingests started together agree on one salt and none reads a half-written one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # fails if another process made it first: then theirs is the salt
                log.info("created the patient salt %s (mode 600): keep it; patient-keyed splits depend on it", path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    if (mode := path.stat().st_mode & 0o777) & 0o077:
        log.warning("patient salt file %s can be read by others (mode %o): chmod 600 it", path, mode)
    value = path.read_text().strip()
    if not value:
        raise OSError(f"{path} is empty")
    return value.encode()


def patient_key(value: object, salt: bytes) -> str | None:
    """The salted hash of one patient key (hex), or None for a missing or blank key."""
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    return hmac.new(salt, text.encode("utf-8"), hashlib.sha256).hexdigest()

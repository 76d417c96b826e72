"""Patient keys that can group images without naming anyone.

A split that puts one patient's slices in both train and test leaks: the model recognises the
patient, not the tumour. Grouping needs a key per patient, but a PatientID (or a hospital's own
patient column) is personal data and must not reach a manifest, a shard, a log line or a
report. So every key is replaced at once by ``HMAC-SHA256(salt, key)``: equal keys give equal
hashes, and without the salt a hash cannot be tested against a guessed ID. The salt comes from
``ENTROPY_FT_PATIENT_SALT`` and is never written anywhere; without it each run draws a random
salt, so the hashes still group within the run but do not match across runs (or with an
``--extends`` dataset).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

SALT_ENV = "ENTROPY_FT_PATIENT_SALT"


def salt_from_env() -> tuple[bytes, bool]:
    """The salt for this run, and whether it came from ``ENTROPY_FT_PATIENT_SALT`` (else: random, this run only)."""
    value = os.environ.get(SALT_ENV, "")
    if value:
        return value.encode(), True
    return secrets.token_bytes(32), False


def patient_key(value: object, salt: bytes) -> str | None:
    """The salted hash of one patient key (hex), or None for a missing or blank key."""
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    return hmac.new(salt, text.encode("utf-8"), hashlib.sha256).hexdigest()

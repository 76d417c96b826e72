"""Shared fixtures: the real data from ../shared (through environment variables), tiny synthetic datasets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from s3_server import s3_endpoint  # noqa: F401  (pytest fixture: a moto S3 server on 127.0.0.1)

os.environ.setdefault("ENTROPY_FT_NO_PROGRESS", "1")
# ingest keeps a patient salt in the user's config folder: the tests' own, never the machine user's
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="entropy-ft-test-config-")


def _shared_path(var: str) -> Path:
    """A path from the environment; skipped when unset locally, a failure under CI=true.

    CI never passes by skipping."""
    value = os.environ.get(var)
    in_ci = os.environ.get("CI", "").lower() == "true"
    if not value:
        if in_ci:
            pytest.fail(f"{var} is not set under CI=true; .ci/run must export it")
        pytest.skip(f"{var} not set: test needs the shared data")
    path = Path(value)
    if not path.exists():
        if in_ci:
            pytest.fail(f"{var}={value} does not exist")
        pytest.skip(f"{var}={value} does not exist")
    return path


@pytest.fixture(scope="session")
def kaggle_zip() -> Path:
    return _shared_path("ENTROPY_FT_KAGGLE_ZIP")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _shared_path("ENTROPY_FT_WEIGHTS_DIR")


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """160 phantoms at 32 px: enough for every split and class, small enough for seconds of training."""
    from entropy_ft.steps import ingest

    out = tmp_path_factory.mktemp("data") / "synthetic"
    ingest.run(ingest.Config(sources=("synthetic:160",), out=str(out), image_size=32, seed=0))
    return out

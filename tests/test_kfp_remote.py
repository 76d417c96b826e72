"""`submit` and `schedule` against a recording stand-in of the KFP v2beta1 REST API on 127.0.0.1."""

from __future__ import annotations

import json
import socket

import kfp_fake_server
import pytest
import yaml

from entropy_ft.cli import main


@pytest.fixture()
def kfp_api():
    state, server = kfp_fake_server.start()
    yield state
    server.shutdown()


def _summary(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def _multipart_yaml(body: bytes) -> dict:
    start = body.index(b"# PIPELINE DEFINITION") if b"# PIPELINE DEFINITION" in body else body.index(b"components:")
    end = body.rindex(b"\r\n--")
    return list(yaml.safe_load_all(body[start:end]))[0]


def test_submit_uploads_pipeline_then_starts_a_run_with_the_flags(kfp_api, capsys, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    assert main(["submit", "--host", kfp_api.url, "--token", "tok-123", "--experiment", "mri",
                 "--arch", "resnet34", "--rule", "quantile:0.3", "--epochs", "7", "--run-name", "r1"]) == 0
    summary = _summary(capsys)
    upload = kfp_api.find("POST", "/pipelines/upload")[0]
    assert upload.query["name"] == ["entropy-ft-training"]
    assert _multipart_yaml(upload.body)["pipelineInfo"]["name"] == "entropy-ft-training"
    assert upload.headers["authorization"] == "Bearer tok-123"
    experiment = kfp_api.find("POST", "/experiments")[0].json()
    assert experiment["display_name"] == "mri"
    run = kfp_api.find("POST", "/runs")[0].json()
    assert run["display_name"] == "r1" and run["experiment_id"] == "experiment-1"
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipeline-1",
                                                 "pipeline_version_id": "pipeline-1-version-1"}
    params = run["runtime_config"]["parameters"]
    assert params["arch"] == "resnet34" and params["rule"] == "quantile:0.3" and params["epochs"] == 7
    assert params["weights"] == "imagenet"  # untouched flags keep the pipeline defaults
    assert summary["run_id"] == "run-1" and summary["version_id"] == "pipeline-1-version-1"


def test_second_submit_adds_a_version_to_the_existing_pipeline(kfp_api, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_api.url)
    assert main(["submit"]) == 0
    assert main(["submit"]) == 0
    assert len(kfp_api.find("POST", "/pipelines/upload_version")) == 1
    version = kfp_api.find("POST", "/pipelines/upload_version")[0]
    assert version.query["pipelineid"] == ["pipeline-1"]
    runs = [r.json() for r in kfp_api.find("POST", "/runs")]
    assert runs[1]["pipeline_version_reference"]["pipeline_version_id"] == "pipeline-1-version-2"
    assert len(kfp_api.find("POST", "/experiments")) == 1  # reused by name


def test_schedule_creates_a_recurring_run_with_cron_and_limits(kfp_api, capsys):
    assert main(["schedule", "--host", kfp_api.url, "--cron", "0 0 2 * * 1", "--pipeline", "ablation",
                 "--strategies", "entropy,random", "--epochs", "3"]) == 0
    summary = _summary(capsys)
    body = kfp_api.find("POST", "/recurringruns")[0].json()
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 1"
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {"pipeline_id": "pipeline-1",
                                                  "pipeline_version_id": "pipeline-1-version-1"}
    assert body["runtime_config"]["parameters"]["strategies"] == ["entropy", "random"]
    assert summary["recurring_run_id"] == "recurring-1" and summary["cron"] == "0 0 2 * * 1"


def test_five_field_cron_gets_seconds(kfp_api, capsys):
    assert main(["schedule", "--host", kfp_api.url, "--cron", "30 3 * * *"]) == 0
    assert kfp_api.find("POST", "/recurringruns")[0].json()["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * *"


@pytest.mark.parametrize("cron", ["61 0 2 * * *", "every day", "0 0 2 * * 1 2025", "0 0 25 * * *"])
def test_invalid_cron_exits_2_before_contacting_kfp(kfp_api, capsys, cron):
    assert main(["schedule", "--host", kfp_api.url, "--cron", cron]) == 2
    assert "--cron" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_unreachable_host_exits_2_with_a_clear_message(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    assert main(["submit", "--host", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "unreachable" in err


def test_missing_host_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["submit"]) == 2
    assert "KF_PIPELINES_ENDPOINT" in capsys.readouterr().err


def test_a_named_schedule_is_replaced_listed_and_removed(kfp_api, capsys):
    """``schedule --name`` is declarative: scheduling the same name again replaces it, never duplicates it."""
    args = ["--host", kfp_api.url, "--experiment", "weekly"]
    assert main(["schedule", *args, "--name", "mri-weekly", "--cron", "0 0 2 * * 1"]) == 0
    first = _summary(capsys)
    assert main(["schedule", *args, "--name", "mri-weekly", "--cron", "0 0 3 * * 1", "--epochs", "7"]) == 0
    second = _summary(capsys)
    assert second["replaced"] == [first["recurring_run_id"]] and first["replaced"] == []
    assert list(kfp_api.recurring) == [second["recurring_run_id"]]
    assert kfp_api.find("DELETE", f"/recurringruns/{first['recurring_run_id']}")

    assert main(["schedule", *args, "--name", "mri-nightly", "--cron", "0 0 1 * * *"]) == 0
    capsys.readouterr()
    assert main(["schedules", *args]) == 0
    listed = {job["name"]: job for job in _summary(capsys)["recurring_runs"]}
    assert set(listed) == {"mri-weekly", "mri-nightly"} and listed["mri-weekly"]["cron"] == "0 0 3 * * 1"

    assert main(["unschedule", *args, "--name", "mri-weekly"]) == 0
    assert _summary(capsys)["deleted"] == [second["recurring_run_id"]]
    assert [job["display_name"] for job in kfp_api.recurring.values()] == ["mri-nightly"]
    assert main(["unschedule", *args, "--name", "mri-weekly"]) == 2
    assert "--name mri-weekly: no recurring run of that name in experiment weekly" in capsys.readouterr().err


def test_schedules_of_a_missing_experiment_are_none_and_create_nothing(kfp_api, capsys):
    assert main(["schedules", "--host", kfp_api.url, "--experiment", "nothing-here"]) == 0
    assert _summary(capsys)["recurring_runs"] == []
    assert not kfp_api.find("POST", "/experiments")


def test_no_cache_reaches_the_compiled_pipeline(kfp_api, capsys, tmp_path):
    """The version a run or schedule uses is compiled with caching off: KFP ignores a run-time
    caching flag for an uploaded version, so the switch must be in the YAML."""
    assert main(["submit", "--host", kfp_api.url]) == 0
    assert main(["submit", "--host", kfp_api.url, "--no-cache"]) == 0
    cached, fresh = (r.body for r in kfp_api.requests if r.path.endswith(("/upload", "/upload_version")))
    assert b"enableCache: true" in cached and b"enableCache: true" not in fresh
    assert main(["compile", "--no-cache", "--out", str(tmp_path / "p.yaml")]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    steps = {name: task for dag in dags for name, task in dag["tasks"].items() if "condition" not in name}
    assert {"ingest", "register", "evaluate-external"} <= set(steps)  # the conditional step too
    assert not any(task.get("cachingOptions", {}).get("enableCache", False) for task in steps.values())

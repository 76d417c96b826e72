"""Two registrations at once against a real ``mlflow server`` (SQL store): one decides at a time,
the champion is always the better model, both decisions are recorded as they were made, and a
holder killed mid-decision does not block the next registration for longer than its lock's expiry."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gate_race import contend
from mlflow_server import mlflow_server  # noqa: F401  (pytest fixture)

from entropy_ft.tracking import registry
from entropy_ft.tracking.gate_lock import OWNER_TAG, SUFFIX, gate_lock

ROUNDS = 20


def race(server, monkeypatch, name: str, use_lock: bool) -> list[tuple[list[str], list[float], str]]:
    """ROUNDS rounds of two contenders whose scores both beat every earlier version; per round the two
    versions, their scores and the champion after it."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # for the contenders, in processes of their own
    client = MlflowClient(tracking_uri=server.url)  # this process may have had another URI set by an earlier test
    client.create_registered_model(name)
    rounds, scores = [], []
    for r in range(ROUNDS):
        pair = [10.0 * r + 1, 10.0 * r + 2][:: 1 if r % 2 else -1]  # which rank has the better model alternates
        made = [client.create_model_version(name, source=f"s3://unused/{name}/{r}/{k}", tags={"score": repr(s)})
                for k, s in enumerate(pair)]
        rounds.append([m.version for m in made])
        scores.append(pair)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=contend, args=(rank, rounds, name, barrier, use_lock, 0.3)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    champion = registry.champion_version(client, name)
    decided = {v: client.get_model_version(name, v).tags for pair in rounds for v in pair}
    return [(pair, s, champion, decided) for pair, s in zip(rounds, scores)]


def test_two_registrations_at_once_never_leave_the_weaker_champion(mlflow_server, monkeypatch):  # noqa: F811
    from mlflow import MlflowClient

    results = race(mlflow_server, monkeypatch, "race-locked", use_lock=True)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    champion_before = "none"
    for pair, scores, _, decided in results:
        better = pair[scores.index(max(scores))]
        first, second = sorted(pair, key=lambda v: decided[v]["decided_against"] != champion_before)
        # one decided first, against the champion the round began with; the other against what it left
        assert decided[first]["decided_against"] == champion_before
        assert decided[second]["decided_against"] == (first if decided[first]["promoted"] == "true"
                                                      else champion_before)
        assert decided[better]["promoted"] == "true"
        champion_before = better  # both beat every earlier version: the better one of the round must win
    assert results[-1][2] == champion_before
    assert [m.name for m in client.search_registered_models() if m.name.endswith(SUFFIX)] == []  # lock released


def test_without_the_lock_the_same_race_crowns_a_weaker_model(mlflow_server, monkeypatch):  # noqa: F811
    """The race is real: unlocked, both contenders read the same champion and both promote; the last writer
    wins. So the test above would catch a registration that decides outside the lock."""
    from mlflow import MlflowClient

    results = race(mlflow_server, monkeypatch, "race-unlocked", use_lock=False)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    both = sum(all(decided[v]["promoted"] == "true" for v in pair) for pair, _, _, decided in results)
    assert both >= ROUNDS // 2
    final = results[-1]
    assert client.get_model_version("race-unlocked", final[2]).tags["score"] in {repr(s) for s in final[1]}


def test_a_holder_killed_mid_decision_blocks_the_next_registration_only_until_its_lock_expires(
        mlflow_server, monkeypatch, caplog):  # noqa: F811
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    code = "import sys; from gate_race import hold; hold(sys.argv[1], float(sys.argv[2]))"
    holder = subprocess.Popen([sys.executable, "-c", code, "killed", "3"], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = client.get_registered_model("killed" + SUFFIX)  # the lock is a registered model, with its holder
        assert lock.tags[OWNER_TAG].split(":")[1] == str(holder.pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        with gate_lock(client, "killed", ttl_s=3):
            waited = time.monotonic() - started
        assert waited < 3 + 5  # its last heartbeat plus the ttl, and a poll
        assert "breaking the registry lock killed.gate-lock" in caplog.text
    finally:
        holder.kill()
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found|does not exist"):
        client.get_registered_model("killed" + SUFFIX)

"""Faults against real servers and processes: an S3 endpoint that drops its connections part-way
through an upload, a dataset shard that is not the one its manifest lists, and a fine-tune killed
with SIGKILL. Nothing half-written is ever read as complete, and a rerun recovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from imagefiles import imagefolder, write_tree
from proxies import DroppingProxy
from safetensors.torch import load_file
from selection_factory import write_selection

from entropy_ft import cli, storage
from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.errors import UserError
from entropy_ft.model.model_dir import WEIGHTS_FILE

FAST = ["--image-size", "32", "--workers", "1"]


def dataset_keys(client, prefix: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket="faults", Prefix=prefix).get("Contents", [])}


def test_an_upload_cut_part_way_leaves_no_dataset_a_step_accepts_and_a_rerun_recovers(s3_endpoint, tmp_path,
                                                                                      monkeypatch, capsys):
    s3_endpoint.make_bucket("faults")
    client = s3_endpoint.client()
    out = "s3://faults/datasets/weekly"
    small = write_tree(tmp_path / "week1", imagefolder(6))
    assert cli.main(["ingest", str(small), "--out", out, *FAST]) == 0
    with storage.local_copy(out) as local:
        assert sum(load_manifest(local).totals.values()) == 24
    capsys.readouterr()

    big = write_tree(tmp_path / "week2", {**imagefolder(6), **imagefolder(60, start=100)})
    proxy = DroppingProxy(s3_endpoint.url, budget=150_000)  # about half of week 2's shards
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    try:
        assert cli.main(["ingest", str(big), "--out", out, *FAST]) == 2
    finally:
        proxy.close()
    err = capsys.readouterr().err.strip().splitlines()
    # exit 2 (a crash would be 1) and one plain line, the last
    assert [line for line in err if line.startswith("entropy-ft ingest: error:")] == [err[-1]]
    assert "s3://faults/datasets/weekly: the upload to S3 failed part-way" in err[-1]
    assert "run this step again" in err[-1]
    assert proxy.cut and proxy.sent > proxy.budget

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint.url)
    keys = dataset_keys(client, "datasets/weekly/")
    assert keys and "datasets/weekly/manifest.json" not in keys  # some shards went up, the record did not
    with storage.local_copy(out) as local, pytest.raises(UserError, match="not a dataset"):
        load_manifest(local)
    assert cli.main(["profile", out, "--weights", "none", "--out", str(tmp_path / "p"), "--images", "8"]) == 2
    assert "not a dataset" in capsys.readouterr().err

    assert cli.main(["ingest", str(big), "--out", out, *FAST]) == 0  # the same step again, the endpoint back
    with storage.local_copy(out) as local:
        assert sum(len(read_split(local, s, ["label"])) for s in ("train", "val", "test")) == 4 * 66


def test_a_shard_that_is_not_the_one_the_manifest_lists_is_refused(synthetic_dataset, tmp_path):
    copy = tmp_path / "ds"
    subprocess.run(["cp", "-r", str(synthetic_dataset), str(copy)], check=True)
    manifest = load_manifest(copy)
    shard = next(s for s in manifest.shards if s["split"] == "train")
    path = copy / shard["path"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated upload
    with pytest.raises(UserError, match=f"shard {shard['path']} is not the one the manifest lists"):
        read_split(copy, "train")
    path.unlink()
    with pytest.raises(UserError, match="missing; ingest again"):
        read_split(copy, "train")


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(synthetic_dataset, tmp_path, capsys):
    """SIGKILL gives no chance to checkpoint: the rerun resumes from the last epoch's checkpoint (written
    atomically, so never half there) and redoes the lost batches with the same draws."""
    sel = write_selection(tmp_path / "sel.json", "resnet18", "alternate")
    common = [str(synthetic_dataset), str(sel), "--epochs", "4", "--patience", "4", "--batch-size", "8",
              "--seed", "1", "--image-size", "32", "--device", "cpu", "--precision", "fp32"]
    out = tmp_path / "killed"
    ckpt = out / "checkpoint" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "entropy_ft.cli", "finetune", *common, "--out", str(out)],
                            env={**os.environ, "ENTROPY_FT_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), "no checkpoint after the first epoch"
    time.sleep(0.4)  # some batches into the next epoch: they are lost, and redone on resume
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.json").exists()
    state = torch.load(ckpt, weights_only=True)
    assert 1 <= state["epoch"] < 4

    assert cli.main(["finetune", *common, "--out", str(out), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs_run"] == 4
    assert cli.main(["finetune", *common, "--out", str(tmp_path / "straight")]) == 0
    resumed = load_file(str(out / WEIGHTS_FILE))
    straight = load_file(str(tmp_path / "straight" / WEIGHTS_FILE))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


KILL_ON_SECOND_SHARD = """
import os, signal, sys
import pyarrow.parquet as pq
from entropy_ft import cli
real, calls = pq.write_table, []
def write_table(table, where, **kwargs):  # the first shard whole, the second half-written, then SIGKILL
    calls.append(where)
    real(table, where, **kwargs)
    if len(calls) == 2:
        os.truncate(where, os.path.getsize(where) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
pq.write_table = write_table
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ingest_killed_mid_write_leaves_the_last_complete_dataset_and_a_rerun_recovers(tmp_path, capsys):
    """SIGKILL while ingest writes its shards (one whole, one half-written): the shards go to a staging
    folder beside the dataset, which replaces the dataset only once complete, so the week-1 dataset
    stays whole and readable, and the same command again writes week 2."""
    out = tmp_path / "weekly"
    week1 = write_tree(tmp_path / "week1", imagefolder(6))
    assert cli.main(["ingest", str(week1), "--out", str(out), *FAST]) == 0
    week2 = write_tree(tmp_path / "week2", {**imagefolder(6), **imagefolder(60, start=100)})
    capsys.readouterr()

    killed = subprocess.run([sys.executable, "-c", KILL_ON_SECOND_SHARD, "ingest", str(week2), "--out", str(out),
                             *FAST], env={**os.environ, "ENTROPY_FT_NO_PROGRESS": "1"}, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    staged = [f for d in tmp_path.glob(".weekly.staging-*") for f in d.rglob("*.parquet")]
    assert len(staged) == 2  # what the killed process wrote, left where no step looks

    manifest = load_manifest(out)  # week 1, whole: every shard there and the one the manifest lists
    assert sum(manifest.totals.values()) == 24
    assert sum(len(read_split(out, s, ["label"])) for s in ("train", "val", "test")) == 24
    assert cli.main(["ingest", str(week2), "--out", str(out), *FAST]) == 0
    assert sum(load_manifest(out).totals.values()) == 4 * 66
    assert sum(len(read_split(out, s, ["label"])) for s in ("train", "val", "test")) == 4 * 66
    assert not list(tmp_path.glob(".weekly.*"))  # the killed writer's staging is gone with the rerun
    assert "left by a writer that was killed" in capsys.readouterr().err


def test_a_live_writers_staging_is_left_alone(tmp_path):
    """Two writers of one artifact at once: the second does not take the first's staging for a dead
    writer's, and the one that finishes last is the artifact."""
    out = tmp_path / "model"
    with storage.output_dir(str(out)) as first:
        (first / "who").write_text("first")
        with storage.output_dir(str(out)) as second:
            assert first.is_dir() and (first / "who").read_text() == "first"
            (second / "who").write_text("second")
        assert (out / "who").read_text() == "second"
    assert (out / "who").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


KILL_WHILE_SWAPPING = """
import os, signal, sys
from pathlib import Path
from entropy_ft import storage
real = os.replace
def replace(src, dst):  # the old artifact moved aside, then SIGKILL before the new one moves in
    real(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)
storage.os.replace = replace
with storage.output_dir(sys.argv[1]) as staging:
    (staging / "version").write_text("2")
"""


def test_a_writer_killed_while_swapping_artifacts_leaves_the_earlier_one_for_the_next_writer(tmp_path):
    """SIGKILL in the instant between moving the old artifact aside and moving the new one in: the
    next writer of that path puts the old one back before it starts, so even a step that then fails
    leaves the last complete artifact where it was."""
    out = tmp_path / "eval"
    with storage.output_dir(str(out)) as staging:
        (staging / "version").write_text("1")
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_SWAPPING, str(out)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    with pytest.raises(RuntimeError), storage.output_dir(str(out)):
        raise RuntimeError("this step fails too")
    assert (out / "version").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]

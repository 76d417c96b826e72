"""`entropy-ft finetune` and `entropy-ft evaluate` end to end, their bad inputs, and preemption by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from selection_factory import write_selection

from entropy_ft.cli import main
from entropy_ft.data.format import manifest_sha256
from entropy_ft.model.model_dir import WEIGHTS_FILE, load_model_dir

FAST = ["--precision", "fp32", "--device", "cpu"]


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> Path:
    return write_selection(tmp_path_factory.mktemp("sel") / "selection.json", "resnet18", "alternate")


@pytest.fixture(scope="module")
def model_dir(synthetic_dataset, selection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    assert main(["finetune", str(synthetic_dataset), str(selection), "--out", str(out), "--epochs", "2",
                 "--batch-size", "16", *FAST]) == 0
    return out


def test_finetune_writes_a_complete_model_dir(model_dir, selection, synthetic_dataset):
    meta = json.loads((model_dir / "model.json").read_text())
    sel = json.loads(selection.read_text())
    assert meta["arch"] == "resnet18" and meta["classes"] == sel["classes"]
    assert meta["selection"] == sel
    assert meta["trainable_params"] == sel["trainable_params"]
    assert meta["data_manifest_sha256"] == manifest_sha256(synthetic_dataset)
    assert meta["weights"] == "none" and meta["weights_sha256"] is None
    prep = meta["preprocessing"]
    assert prep["image_size"] == 32 and prep["channels"] == 3 and len(prep["mean"]) == len(prep["std"]) == 3
    training = meta["training"]
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert training["config"]["epochs"] == 2 and training["config"]["precision"] == "fp32"
    assert 1 <= training["best_epoch"] <= 2
    history = json.loads((model_dir / "history.json").read_text())
    assert history["history"] == training["history"]
    assert not (model_dir / "checkpoint").exists()  # the finished Model dir replaced the in-progress checkpoint
    model, _ = load_model_dir(model_dir)
    assert sum(p.numel() for p in model.parameters()) == meta["total_params"]
    calibration = meta["calibration"]  # temperature scaling fitted on the val split
    assert calibration["fitted_on"] == "val" and calibration["val_images"] > 0 and calibration["temperature"] > 0
    assert calibration["val_nll"][1] <= calibration["val_nll"][0] + 1e-9 and calibration["abstain_below"] is None


def test_evaluate_writes_eval_json_and_plot_and_is_seeded(model_dir, synthetic_dataset, tmp_path, capsys):
    args = ["evaluate", str(model_dir), str(synthetic_dataset), "--noise", "0.2,0", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    summary = _summary(capsys)
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    again = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert report["noise"] == again["noise"]
    assert [row["sigma"] for row in report["noise"]] == [0.0, 0.2]
    clean = report["noise"][0]
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix", "ci",
                "per_class"):
        assert report[key] == clean[key]
    for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
        low, high = report["ci"][metric]
        assert low <= report[metric] <= high
    assert set(report["per_class"]) == set(report["classes"])
    assert sum(r["sensitivity"]["n"] for r in report["per_class"].values()) == 24
    assert sum(map(sum, clean["confusion_matrix"])) == report["num_images"] == 24
    assert report["split"] == "test" and report["seed"] == 3
    assert report["dataset_manifest_sha256"] == manifest_sha256(synthetic_dataset)
    meta = json.loads((model_dir / "model.json").read_text())
    assert report["trainable_params"] == meta["trainable_params"]
    assert report["reduction_vs_full"] == meta["selection"]["reduction_vs_full"]
    assert summary["accuracy"] == report["accuracy"] and summary["images"] == 24
    html = (tmp_path / "a" / "eval.html").read_text()
    assert "<svg" in html and "0.2" in html and "95% confidence intervals" in html and "sensitivity" in html
    cal = report["calibration"]
    assert cal["temperature"] == meta["calibration"]["temperature"] and 0 <= cal["ece"] <= 1
    assert sum(b["images"] for b in cal["reliability"]) == 24 and cal["coverage"][0]["coverage"] == 1.0
    assert all("ece" in row for row in report["noise"])
    assert "<h2>Calibration</h2>" in html and "<h2>Coverage against accuracy</h2>" in html
    assert (tmp_path / "a" / "eval.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("noise", ["1.5", "abc", "=-0.1", ","])
def test_evaluate_rejects_bad_sigmas(noise, model_dir, synthetic_dataset, tmp_path, capsys):
    flag = f"--noise{noise}" if noise.startswith("=") else None
    argv = ["evaluate", str(model_dir), str(synthetic_dataset), "--out", str(tmp_path / "e")]
    argv += [flag] if flag else ["--noise", noise]
    assert main(argv) == 2
    assert "--noise" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_missing_inputs_exit_2(model_dir, synthetic_dataset, selection, tmp_path, capsys):
    missing = str(tmp_path / "no-such-dataset")
    assert main(["evaluate", str(model_dir), missing, "--out", str(tmp_path / "e")]) == 2
    assert "no-such-dataset" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "no-model"), str(synthetic_dataset), "--out", str(tmp_path / "e")]) == 2
    assert "no-model" in capsys.readouterr().err
    assert main(["finetune", missing, str(selection), "--out", str(tmp_path / "m"), *FAST]) == 2
    assert "no-such-dataset" in capsys.readouterr().err
    assert main(["finetune", str(synthetic_dataset), str(tmp_path / "none.json"), "--out", str(tmp_path / "m")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_finetune_rejects_a_selection_for_other_classes_and_bad_flags(synthetic_dataset, tmp_path, capsys):
    other = write_selection(tmp_path / "other.json", "resnet18", "head", classes=["a", "b", "c", "d"])
    assert main(["finetune", str(synthetic_dataset), str(other), "--out", str(tmp_path / "m"), *FAST]) == 2
    assert "classes" in capsys.readouterr().err
    sel = write_selection(tmp_path / "sel.json", "resnet18", "head")
    assert main(["finetune", str(synthetic_dataset), str(sel), "--out", str(tmp_path / "m"), "--abstain-below",
                 "1.5"]) == 2
    assert "--abstain-below 1.5: expected a fraction between 0 and 1" in capsys.readouterr().err
    assert main(["finetune", str(synthetic_dataset), str(sel), "--out", str(tmp_path / "m"), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_sigterm_checkpoints_exits_143_and_resume_reaches_the_uninterrupted_weights(
        synthetic_dataset, tmp_path, capsys):
    sel = write_selection(tmp_path / "sel.json", "resnet18", "alternate")
    common = [str(synthetic_dataset), str(sel), "--epochs", "4", "--patience", "4", "--batch-size", "8",
              "--seed", "1", *FAST]
    out = tmp_path / "preempted"
    ckpt = out / "checkpoint" / "last.pt"
    env = {**os.environ, "ENTROPY_FT_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "entropy_ft.cli", "finetune", *common, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), "no checkpoint after the first epoch"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "checkpoint" in stderr
    assert ckpt.exists() and not (out / "model.json").exists()
    state = torch.load(ckpt, weights_only=True)
    assert 1 <= state["epoch"] < 4  # stopped part-way, not at the end

    assert main(["finetune", *common, "--out", str(out), "--resume"]) == 0
    assert _summary(capsys)["epochs_run"] == 4
    assert main(["finetune", *common, "--out", str(tmp_path / "straight")]) == 0
    resumed = load_file(str(out / WEIGHTS_FILE))
    straight = load_file(str(tmp_path / "straight" / WEIGHTS_FILE))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)

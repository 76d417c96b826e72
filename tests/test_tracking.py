"""Tracking and registry-gate logic without a server: the gate decision, metric extraction,
redaction, and the embedded local store."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch

from entropy_ft.data.format import ImageRecord
from entropy_ft.errors import UserError
from entropy_ft.tracking import registry
from entropy_ft.tracking import runs as tracking
from entropy_ft.tracking.registry import Decision, GateMetric, decide

EVAL = {
    "classes": ["a", "b"],
    "accuracy": 0.8,
    "macro_f1": 0.75,
    "balanced_accuracy": 0.7,
    "per_class_recall": {"a": 0.9, "b": 0.5},
    "noise": [
        {"sigma": 0.0, "accuracy": 0.8, "macro_f1": 0.75, "balanced_accuracy": 0.7},
        {"sigma": 0.1, "accuracy": 0.6, "macro_f1": 0.55, "balanced_accuracy": 0.5},
        {"sigma": 0.2, "accuracy": 0.4, "macro_f1": float("nan"), "balanced_accuracy": 0.3},
    ],
}


@pytest.mark.parametrize(
    ("mode", "candidate", "champion_version", "champion", "promote"),
    [
        ("better", 0.8, None, None, True),  # first model
        ("better", 0.8, "1", 0.7, True),
        ("better", 0.7, "1", 0.7, False),  # tie
        ("better", 0.6, "1", 0.7, False),
        ("better", None, None, None, False),  # candidate metric missing, even with no champion
        ("better", None, "1", 0.7, False),
        ("better", 0.9, "1", None, False),  # champion metric missing: no evidence
        ("always", None, "1", 0.9, True),
        ("never", 0.99, None, None, False),
    ],
)
def test_gate_promotes_only_on_strict_improvement(mode, candidate, champion_version, champion, promote):
    decision = decide(mode, candidate, champion_version, champion)
    assert decision.promote is promote
    assert decision.reason


def test_gate_metric_parsing_and_values():
    assert GateMetric.parse("macro_f1") == GateMetric("macro_f1", 0.0)
    assert GateMetric.parse("accuracy@0.1") == GateMetric("accuracy", 0.1)
    assert registry.metric_value(EVAL, GateMetric("macro_f1")) == 0.75
    assert registry.metric_value(EVAL, GateMetric("accuracy", 0.1)) == 0.6
    assert registry.metric_value(EVAL, GateMetric("macro_f1", 0.2)) is None  # NaN counts as missing
    assert registry.metric_value(EVAL, GateMetric("macro_f1", 0.3)) is None  # sigma not evaluated
    # an eval.json without a noise table still has the sigma-0 figures at the top level
    assert registry.metric_value({"macro_f1": 0.5}, GateMetric("macro_f1")) == 0.5
    for bad in ("f1", "macro_f1@x", "accuracy@2"):
        with pytest.raises(UserError, match="--gate-metric"):
            GateMetric.parse(bad)


def test_version_tags_carry_metrics_and_decision():
    f1 = 6 / 70  # not short in decimal: a rounded tag would make the next identical model look better or worse
    metrics = tracking.eval_metrics({**EVAL, "noise": [{"sigma": 0.0, "macro_f1": f1}]})
    metric = GateMetric("macro_f1")
    tags = registry.version_tags(metrics, metric, f1, Decision(False, "tie"), "3", 0.75, {"arch": "resnet18"})
    assert float(tags[metric.tag]) == f1
    assert not decide("better", f1, "3", float(tags[metric.tag])).promote
    assert tags["entropy_ft.gate.promoted"] == "false"
    assert tags["entropy_ft.gate.champion_before"] == "3"
    assert tags["entropy_ft.arch"] == "resnet18"
    assert all(isinstance(v, str) for v in tags.values())


def test_eval_metrics_names_every_sigma_and_drops_nan():
    metrics = tracking.eval_metrics(EVAL)
    assert metrics["test_macro_f1"] == 0.75
    assert metrics["test_accuracy_sigma_0.1"] == 0.6
    assert metrics["test_recall_b"] == 0.5
    assert "test_macro_f1_sigma_0.2" not in metrics
    assert all(math.isfinite(v) for v in metrics.values())


def test_redact_strips_userinfo_and_secret_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    text = "http://alice:pw@mlflow:5000/api and s3://bucket key=s3cr3t-value https://tok@host/x"
    out = tracking.redact(text)
    assert "alice" not in out and ":pw@" not in out and "s3cr3t-value" not in out and "tok@" not in out
    assert "http://***@mlflow:5000/api" in out and "s3://bucket" in out


def test_run_params_from_model_meta():
    meta = {
        "arch": "resnet18", "classes": ["a", "b"], "weights": "imagenet", "weights_sha256": "ab" * 32,
        "data_manifest_sha256": "cd" * 32, "preprocessing": {"image_size": 224},
        "selection": {"strategy": "entropy", "rule": "below-mean", "seed": 0, "layers": ["conv1", "layer1.0.conv1"],
                      "trainable_params": 10, "reduction_vs_full": 0.9},
        "training": {"config": {"epochs": 10, "lr": 0.001, "augment": True, "image_size": None}},
    }
    params = tracking.run_params(model_meta=meta)
    assert params["arch"] == "resnet18"
    assert params["classes"] == '["a", "b"]'
    assert params["selection.strategy"] == "entropy"
    assert params["selection.rule"] == "below-mean"
    assert params["selection.num_layers"] == "2"
    assert params["train.lr"] == "0.001"
    assert params["image_size"] == "224"
    assert params["data_manifest_sha256"] == "cd" * 32
    assert "train.image_size" not in params  # None values are not params


def test_local_default_store(tmp_path, monkeypatch):
    """Without MLFLOW_TRACKING_URI: SQLite under $ENTROPY_FT_HOME/mlruns, artifacts beside it."""
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; set-then-delete makes monkeypatch restore it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("ENTROPY_FT_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "local-store-test")
    monkeypatch.chdir(tmp_path.parent)  # artifacts must not depend on the working directory
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run_id = tracking.ensure_run(None, "local")
    tracking.log_json(run_id, "selection.json", {"strategy": "head"})
    on_epoch_end = tracking.epoch_logger(run_id)
    on_epoch_end(1, {"epoch": 1, "train_loss": 1.5, "val": {"accuracy": 0.5}, "images_per_second": None})
    logged = list((tmp_path / "mlruns" / "artifacts").rglob("selection.json"))
    assert len(logged) == 1 and run_id in str(logged[0])
    client = tracking.connect()
    metrics = client.get_run(run_id).data.metrics
    assert metrics == {"train_loss": 1.5, "val_accuracy": 0.5}
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    with pytest.raises(UserError, match="no such MLflow run"):
        tracking.ensure_run("0" * 32)
    metric = GateMetric("macro_f1")
    assert registry.current_champion(client, "never-registered", metric) == (None, None)
    client.create_registered_model("no-champion-yet")  # e.g. the first version came with --promote never
    assert registry.current_champion(client, "no-champion-yet", metric) == (None, None)


@pytest.mark.parametrize("model_size", [48, 32])  # the model's input size: the Dataset's, or resized on load
def test_serving_sees_the_pixels_training_sees(kaggle_zip, tmp_path, model_size):
    """Raw JPEG bytes through the served model's preprocessing give exactly the tensor that
    ingest + the training loader give for the same file."""
    import zipfile

    from entropy_ft.data.format import DatasetWriter, read_split
    from entropy_ft.data.loader import ParquetImages
    from entropy_ft.data.preprocess import Settings, describe, process
    from entropy_ft.tracking.serving import model_pixels

    with zipfile.ZipFile(kaggle_zip) as zf:
        names = [n for n in sorted(zf.namelist()) if n.startswith("Testing/") and n.endswith(".jpg")][::200][:6]
        files = {n: zf.read(n) for n in names}
    settings = Settings(48)
    writer = DatasetWriter(tmp_path, ["a"], 48, describe(settings, 0))
    for name, data in files.items():
        p = process(data, settings)
        writer.add("train", ImageRecord(p.pixels, 0, "a", p.file_sha256, name))
    manifest = writer.close()
    loaded = ParquetImages(tmp_path, "train", image_size=model_size)
    preprocessing = {"image_size": model_size, "ingest": manifest.preprocessing}
    sources = read_split(tmp_path, "train", ["source"]).column("source").to_pylist()  # the loader's row order
    assert sorted(sources) == sorted(files)
    for i, name in enumerate(sources):
        tensor = model_pixels(files[name], preprocessing, model_size)
        assert tensor.shape == (3, model_size, model_size)
        assert torch.equal(tensor, loaded.pixels(i)), name

"""Tracking and registry-gate logic without a server: the gate decision, metric extraction,
redaction, and the embedded local store."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch

from entropy_ft.data.format import ImageRecord
from entropy_ft.errors import UserError
from entropy_ft.evaluation.paired import PairedComparison, compare_paired
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


def _comparison(delta: float, p_better: float, p_worse: float = 1.0, sigma: float = 0.0) -> PairedComparison:
    return PairedComparison("macro_f1", sigma, 1311, 0.9 + delta, 0.9, delta, delta - 0.01, delta + 0.01, p_better,
                            p_worse, "paired permutation test")


@pytest.mark.parametrize(
    ("mode", "champion_version", "comparison", "guards", "promote", "because"),
    [
        ("better", None, None, [], True, "no champion yet"),
        ("better", "1", _comparison(0.02, 0.001), [], True, "beats champion v1"),
        ("better", "1", _comparison(0.002, 0.001), [], False, "below --gate-min-delta 0.005"),  # significant, tiny
        ("better", "1", _comparison(0.02, 0.2), [], False, "not significant at --gate-alpha 0.05"),
        ("better", "1", _comparison(0.0, 1.0), [], False, "below --gate-min-delta"),  # a tie
        ("better", "1", _comparison(-0.05, 1.0, 0.001), [], False, "below --gate-min-delta"),
        ("better", "1", _comparison(0.02, 0.001), [_comparison(-0.05, 1.0, 0.01, sigma=0.2)], False,
         "but worse at sigma 0.2"),
        ("better", "1", _comparison(0.02, 0.001), [_comparison(-0.01, 0.9, 0.3, sigma=0.2)], True, "beats"),
        ("better", "1", None, [], False, "no head-to-head with champion v1: no data"),
        ("always", "1", None, [], True, "--promote always"),
        ("never", None, _comparison(0.5, 0.0), [], False, "--promote never"),
    ],
)
def test_gate_promotes_only_a_significant_gain_on_the_same_images(mode, champion_version, comparison, guards, promote,
                                                                   because):
    decision = decide(mode, champion_version, comparison, guards, min_delta=0.005, alpha=0.05,
                      unavailable="no data")
    assert decision.promote is promote
    assert because in decision.reason


def test_paired_tests_on_known_cases():
    y = np.array([0, 1, 2, 3] * 25)
    right = y.copy()
    one_off = y.copy()
    one_off[0] = 1  # the champion misses one image of 100
    same = compare_paired(y, right, right, 4, "accuracy")
    assert (same.delta, same.p_better, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0)
    one = compare_paired(y, right, one_off, 4, "accuracy")
    assert one.delta == pytest.approx(0.01) and one.p_better == pytest.approx(0.5)  # McNemar: 1 win, 0 losses
    many_off = y.copy()
    many_off[:20] = (many_off[:20] + 1) % 4
    many = compare_paired(y, right, many_off, 4, "accuracy")
    assert many.p_better == pytest.approx(0.5 ** 20) and many.p_worse == 1.0 and "20 images" in many.test
    f1 = compare_paired(y, right, many_off, 4, "macro_f1", seed=1)
    assert f1.delta > 0.15 and f1.p_better < 0.01 and f1.ci_low > 0 and f1.p_worse > 0.99
    assert f1 == compare_paired(y, right, many_off, 4, "macro_f1", seed=1)  # seeded: the same decision twice
    reverse = compare_paired(y, many_off, right, 4, "balanced_accuracy")
    assert reverse.delta < 0 and reverse.p_worse < 0.01 and reverse.p_better > 0.99


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


def test_version_tags_carry_metrics_decision_and_evidence():
    f1 = 6 / 70  # not short in decimal: tags keep the exact value
    metrics = tracking.eval_metrics({**EVAL, "noise": [{"sigma": 0.0, "macro_f1": f1}]})
    metric = GateMetric("macro_f1")
    comparison = _comparison(0.002, 0.3)
    tags = registry.version_tags(metrics, metric, f1, Decision(False, "tie"), "3", comparison, {"arch": "resnet18"})
    assert float(tags[metric.tag]) == f1
    assert tags["entropy_ft.gate.promoted"] == "false"
    assert tags["entropy_ft.gate.champion_before"] == "3"
    assert float(tags["entropy_ft.gate.delta"]) == 0.002 and float(tags["entropy_ft.gate.p_better"]) == 0.3
    assert tags["entropy_ft.gate.images"] == "1311" and tags["entropy_ft.gate.test"] == "paired permutation test"
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
    assert registry.champion_version(client, "never-registered") is None
    client.create_registered_model("no-champion-yet")  # e.g. the first version came with --promote never
    assert registry.champion_version(client, "no-champion-yet") is None


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
        [p] = process(data, settings).images
        writer.add("train", ImageRecord(p.pixels, 0, "a", p.file_sha256, name, p.pixel_sha256))
    manifest = writer.close()
    loaded = ParquetImages(tmp_path, "train", image_size=model_size)
    preprocessing = {"image_size": model_size, "ingest": manifest.preprocessing}
    sources = read_split(tmp_path, "train", ["source"]).column("source").to_pylist()  # the loader's row order
    assert sorted(sources) == sorted(files)
    for i, name in enumerate(sources):
        tensor = model_pixels(files[name], preprocessing, model_size)
        assert tensor.shape == (3, model_size, model_size)
        assert torch.equal(tensor, loaded.pixels(i)), name

"""Each KFP component on its own, through ``component.python_func``, with real small artifacts.

The chain ingest -> profile -> select -> finetune -> evaluate -> compare -> register runs
once on 160 synthetic phantoms at 32 px (random init, one epoch); every test checks what one
component hands to KFP: its output artifacts, metrics and return value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from entropy_ft.kfp_outputs import ERROR_DIR_ENV
from entropy_ft.pipelines.definitions import _components

C = _components(None)


def _artifact(kind, path: Path):
    return kind(uri=str(path))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """Every component's outputs, run in pipeline order on real artifacts."""
    tmp = tmp_path_factory.mktemp("components")
    out = {"tmp": tmp}
    out["dataset"] = _artifact(dsl.Dataset, tmp / "dataset")
    out["ingest_report"] = _artifact(dsl.Markdown, tmp / "ingest.md")
    out["ingest_metrics"] = _artifact(dsl.Metrics, tmp / "metrics-1")
    C["ingest"].python_func(data="synthetic:160", layout="auto", image_size=32, duplicates="report", seed=0, extends="",
                            labels="", dataset=out["dataset"], report=out["ingest_report"],
                            metrics=out["ingest_metrics"])
    out["profile"], out["profile_chart"] = _artifact(dsl.Artifact, tmp / "profile"), _artifact(dsl.HTML, tmp / "p.html")
    out["profile_metrics"] = _artifact(dsl.Metrics, tmp / "metrics-2")
    C["profile"].python_func(dataset=out["dataset"], arch="resnet18", weights="none", images=64, bins=64,
                             estimator="histogram", tap="conv", bootstrap=10, seed=0, profile=out["profile"],
                             chart=out["profile_chart"], metrics=out["profile_metrics"])
    out["selection"] = _artifact(dsl.Artifact, tmp / "selection")
    out["select_metrics"] = _artifact(dsl.Metrics, tmp / "metrics-3")
    out["select_chart"] = _artifact(dsl.HTML, tmp / "s.html")
    out["select_return"] = C["select"].python_func(
        profile=out["profile"], strategy="head", rule="below-mean", stability=0.5, seed=0, selection=out["selection"],
        chart=out["select_chart"], metrics=out["select_metrics"])
    out["model"], out["finetune_metrics"] = _artifact(dsl.Model, tmp / "model"), _artifact(dsl.Metrics, tmp / "m-4")
    out["finetune_return"] = C["finetune"].python_func(
        dataset=out["dataset"], selection=out["selection"], epochs=1, lr=1e-3, batch_size=32, train_noise=0.2,
        train_noise_p=0.5, train_noise_mode="uniform", seed=0,
        track=False, kfp_run_id="", kfp_run_name="", pipeline_name="test", model=out["model"],
        metrics=out["finetune_metrics"])
    out["evaluation"] = _artifact(dsl.Artifact, tmp / "evaluation")
    out["eval_metrics"] = _artifact(dsl.Metrics, tmp / "metrics-5")
    out["eval_plot"], out["confusion"] = _artifact(dsl.HTML, tmp / "e.html"), dsl.ClassificationMetrics()
    C["evaluate"].python_func(model=out["model"], dataset=out["dataset"], noise="0,0.2", seed=0,
                              evaluation=out["evaluation"], plot=out["eval_plot"], metrics=out["eval_metrics"],
                              confusion=out["confusion"])
    return out


def test_ingest_writes_the_dataset_and_its_summary(chain):
    manifest = json.loads(Path(chain["dataset"].path, "manifest.json").read_text())
    assert sum(manifest["totals"].values()) == 160
    report = Path(chain["ingest_report"].path).read_text()
    assert report.startswith("# Dataset") and "| train |" in report
    assert chain["ingest_metrics"].metadata["images"] == 160
    # the numbers are also the Metrics artifact's file: kfp.local's cache needs every output to exist
    assert json.loads(Path(chain["ingest_metrics"].path).read_text()) == chain["ingest_metrics"].metadata
    assert chain["dataset"].metadata["classes"] == manifest["classes"]


def test_profile_publishes_the_chart_and_numbers(chain):
    profile = json.loads(Path(chain["profile"].path, "profile.json").read_text())
    assert len(profile["layers"]) == 20 and profile["bins"] == 64 and profile["bootstrap"]["resamples"] == 10
    assert "<svg" in Path(chain["profile_chart"].path).read_text()
    assert chain["profile_metrics"].metadata["layers"] == 20


def test_select_takes_the_pipeline_rule_for_a_baseline_and_returns_the_budget(chain):
    selection = json.loads(Path(chain["selection"].path, "selection.json").read_text())
    assert selection["strategy"] == "head" and selection["layers"] == [] and selection["rule"] is None
    assert selection["stability"] is None  # the pipeline's stability, like its rule, is not a baseline's
    assert chain["select_return"] == selection["trainable_params"] == 512 * 4 + 4
    assert chain["select_metrics"].metadata["trainable_params"] == selection["trainable_params"]
    assert chain["selection"].metadata["strategy"] == "head"


def test_finetune_writes_a_model_dir_and_no_mlflow_run_when_not_tracking(chain):
    assert chain["finetune_return"] == ""
    model = Path(chain["model"].path)
    assert {"weights.safetensors", "model.json", "history.json"} <= {p.name for p in model.iterdir()}
    assert chain["finetune_metrics"].metadata["epochs_run"] == 1
    config = json.loads((model / "model.json").read_text())["training"]["config"]
    assert config["train_noise"] == 0.2 and config["train_noise_p"] == 0.5  # the pipeline's noise reached training
    assert config["train_noise_mode"] == "uniform"
    assert chain["model"].metadata["strategy"] == "head"


def test_evaluate_logs_metrics_and_the_confusion_matrix(chain):
    report = json.loads(Path(chain["evaluation"].path, "eval.json").read_text())
    assert [row["sigma"] for row in report["noise"]] == [0.0, 0.2]
    assert chain["eval_metrics"].metadata["accuracy"] == report["accuracy"]
    assert chain["eval_metrics"].metadata["accuracy_by_sigma_0.2"] == report["noise"][1]["accuracy"]
    matrix = chain["confusion"].metadata["confusionMatrix"]["rows"]
    assert [row["row"] for row in matrix] == report["confusion_matrix"]


def test_compare_tabulates_the_evaluations(chain):
    tmp = chain["tmp"]
    comparison, table, plot = (_artifact(dsl.Artifact, tmp / "cmp"), _artifact(dsl.Markdown, tmp / "cmp.md"),
                               _artifact(dsl.HTML, tmp / "cmp.html"))
    C["compare"].python_func(evaluations=[chain["evaluation"]], comparison=comparison, table=table, plot=plot)
    rows = json.loads(Path(comparison.path, "comparison.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["head"]
    assert "| head |" in Path(table.path).read_text()
    assert "<svg" in Path(plot.path).read_text()


def test_register_records_a_version_in_the_embedded_store(chain, monkeypatch):
    tmp = chain["tmp"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ENTROPY_FT_HOME", str(tmp / "home"))
    report = _artifact(dsl.Markdown, tmp / "registration.md")
    version = C["register"].python_func(
        model=chain["model"], evaluation=chain["evaluation"], profile=chain["profile"], selection=chain["selection"],
        dataset=chain["dataset"], model_name="components-test", promote="better", gate_metric="macro_f1",
        gate_alpha=0.05, gate_min_delta=0.005, drift_threshold=0.75, mlflow_run_id="", kfp_run_id="", kfp_run_name="",
        pipeline_name="test", report=report)
    assert version == "1"
    text = Path(report.path).read_text()
    assert "| promoted | True |" in text and "| reason | no champion yet |" in text


def test_a_user_error_ends_the_task_with_exit_2_and_one_plain_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path / "errors"))
    with pytest.raises(SystemExit) as ended:
        C["ingest"].python_func(data="synthetic:10", layout="auto", image_size=32, duplicates="report", seed=0,
                                extends="", labels="",
                                dataset=_artifact(dsl.Dataset, tmp_path / "ds"),
                                report=_artifact(dsl.Markdown, tmp_path / "r.md"),
                                metrics=_artifact(dsl.Metrics, tmp_path / "metrics"))
    assert ended.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("entropy-ft ingest: synthetic:10: need at least 28 images so that every class has train, val "
                    "and test images")
    assert (tmp_path / "errors" / "ingest.txt").read_text().strip() == last.removeprefix("entropy-ft ")
    assert not (tmp_path / "ds").exists()

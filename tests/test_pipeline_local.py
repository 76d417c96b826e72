"""The pipelines run end to end through kfp.local (SubprocessRunner, no Docker), as `entropy-ft run` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dicomfiles import pilot_cohort
from imagefiles import write_tree

from entropy_ft.selection.rules import DEFAULT_RULE, DEFAULT_STRATEGY

TINY = ["--data", "synthetic:120", "--image-size", "32", "--weights", "none", "--profile-images", "24",
        "--bins", "64", "--batch-size", "16", "--noise", "0,0.2"]


def run_cli(args: list[str], tmp_path: Path, **extra_env: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ENTROPY_FT_HOME", "AWS_"))}
    env.update(ENTROPY_FT_NO_PROGRESS="1", **extra_env)
    proc = subprocess.run([sys.executable, "-m", "entropy_ft.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON summary, got {proc.stdout[:500]!r}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("training")
    # external validation on 40 phantoms: those drawn with the class the training data's same index has are copies
    return run_cli(["run", "--root", str(tmp / "out"), *TINY, "--epochs", "2", "--model-name", "pipeline-test",
                    "--external-data", "synthetic:40"], tmp)


def test_training_pipeline_produces_every_artifact(training_run):
    out = {k: Path(v) for k, v in training_run["outputs"].items()}
    manifest = json.loads((out["dataset"] / "manifest.json").read_text())
    assert sum(manifest["totals"].values()) == 120
    assert all((out["dataset"] / s["path"]).is_file() for s in manifest["shards"])

    profile = json.loads((out["profile"] / "profile.json").read_text())
    assert profile["arch"] == "resnet18" and len(profile["layers"]) == 20 and profile["bins"] == 64
    assert profile["num_images"] == 24

    selection = json.loads((out["selection"] / "selection.json").read_text())
    assert selection["strategy"] == DEFAULT_STRATEGY and selection["rule"] == DEFAULT_RULE
    assert 0 < selection["reduction_vs_full"] < 1

    model = json.loads((out["model"] / "model.json").read_text())
    assert (out["model"] / "weights.safetensors").stat().st_size > 1_000_000
    assert model["classes"] == manifest["classes"]
    assert model["selection"]["layers"] == selection["layers"]

    evaluation = json.loads((out["evaluation"] / "eval.json").read_text())
    assert [row["sigma"] for row in evaluation["noise"]] == [0.0, 0.2]
    assert len(evaluation["confusion_matrix"]) == 4
    assert evaluation["num_images"] == manifest["totals"]["test"]

    assert "version" in (out["registration"]).read_text().lower()
    external = json.loads((out["external"] / "eval.json").read_text())
    assert external["split"] == "all" and external["num_images"] == 40 and external["external"]["unknown_images"] == 0
    for name in ("profile/chart", "select/chart", "evaluate/plot"):
        assert "<svg" in (Path(training_run["run_dir"]) / name).read_text()


def test_training_run_registers_in_the_local_mlflow_store(training_run):
    from mlflow import MlflowClient

    from entropy_ft.data import synthetic

    uri = training_run["mlflow_tracking_uri"]
    assert uri.startswith("sqlite:///") and training_run["mlflow_ui"].startswith("mlflow ui --backend-store-uri")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='pipeline-test'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    assert run.data.params["arch"] == "resnet18"
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [m.step for m in history] == [1, 2]  # logged per epoch as training went
    assert client.get_model_version_by_alias("pipeline-test", "champion").version == versions[0].version
    # named once (the KFP run's name already starts with the pipeline's), with a model card and its data
    assert run.info.run_name == Path(training_run["run_dir"]).name
    assert run.info.run_name.startswith("entropy-ft-training-") and "training-entropy-ft" not in run.info.run_name
    card = run.data.tags["mlflow.note.content"]
    assert "## Registration gate" in card and versions[0].description == card
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation", "testing"}
    # the external validation task logged into the same run, copies of training images counted
    copies = int((synthetic.labels(40, 0) == synthetic.labels(120, 0)[:40]).sum())
    metrics = run.data.metrics
    assert metrics["external_scored"] == 40 and metrics["external_duplicates_exact"] == copies > 0
    assert metrics["external_unseen_images"] == 40 - metrics["external_duplicates"] and copies < 40
    assert "external_accuracy_sigma_0.2" in metrics
    assert {"external/eval.json", "external/eval.html"} <= {f.path for f in client.list_artifacts(run.info.run_id,
                                                                                                   "external")}


def test_a_second_run_reuses_ingest_and_profile_unless_told_not_to(training_run, tmp_path):
    root = str(Path(training_run["run_dir"]).parents[1])
    assert training_run["cached"] == []
    again = run_cli(["run", "--root", root, *TINY, "--epochs", "1", "--model-name", "pipeline-test-2"], tmp_path)
    assert again["cached"] == ["ingest", "profile"]
    fresh = run_cli(["run", "--root", root, *TINY, "--epochs", "1", "--model-name", "pipeline-test-2", "--no-cache"],
                    tmp_path)
    assert fresh["cached"] == [] and "dataset" in fresh["outputs"]


def test_ablation_pipeline_compares_the_strategies_it_ran(tmp_path):
    summary = run_cli(["run", "--pipeline", "ablation", "--root", str(tmp_path / "out"), *TINY, "--epochs", "1",
                       "--strategies", "entropy,head"], tmp_path)
    comparison = json.loads((Path(summary["outputs"]["comparison"]) / "comparison.json").read_text())
    rows = {row["strategy"]: row for row in comparison["rows"]}
    assert set(rows) == {"entropy", "head"}
    assert rows["head"]["trainable_params"] == 2052
    assert rows["entropy"]["trainable_params"] > rows["head"]["trainable_params"]
    table = (Path(summary["outputs"]["comparison"]) / "comparison.md").read_text()
    assert "| entropy |" in table and "| head |" in table


def test_a_pilot_study_of_24_dicom_patients_trains_end_to_end(tmp_path):
    """The small cohort a hospital starts with: 12 glioma and 12 notumor patients, 3 slices each, run with
    the defaults as a new user would. Val and test each hold both classes, and the salt file gives a second
    run, made afresh, the same patient splits."""
    src = write_tree(tmp_path / "pilot", pilot_cohort())
    (tmp_path / "config").mkdir()
    args = ["run", "--data", str(src), "--image-size", "32", "--epochs", "1", "--weights", "none",
            "--root", str(tmp_path / "out"), "--model-name", "pilot"]
    first = run_cli(args, tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    manifest = json.loads((Path(first["outputs"]["dataset"]) / "manifest.json").read_text())
    for split in ("val", "test"):
        assert {c for c, n in manifest["counts"][split].items() if n} == {"glioma", "notumor"}
    assert manifest["patients"]["distinct"] == 24 and manifest["patients"]["in_several_splits"] == 0
    assert manifest["patients"]["salt"] == "salt file"
    evaluation = json.loads((Path(first["outputs"]["evaluation"]) / "eval.json").read_text())
    assert evaluation["num_images"] == sum(manifest["counts"]["test"].values())

    second = run_cli([*args, "--no-cache"], tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    again = json.loads((Path(second["outputs"]["dataset"]) / "manifest.json").read_text())
    assert again["counts"] == manifest["counts"] and again["patients"] == manifest["patients"]


def test_flag_of_the_other_pipeline_is_refused(tmp_path):
    from entropy_ft.cli import main

    assert main(["run", "--pipeline", "ablation", "--strategy", "full", "--root", str(tmp_path)]) == 2

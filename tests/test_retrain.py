"""Scheduled retraining on a growing bucket of real scans: splits hold, the gate holds, drift is seen.

The story itself is ``benchmarks/retrain.py`` (week 1 = every other file of week 2, both from
the Kaggle archive with its folders merged so that ingest draws the test split); here it runs
at small settings against a real MLflow server, and every claim of the issue is checked.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from imagefiles import make_zip
from mlflow_server import mlflow_server  # noqa: F401  (pytest fixture)
from test_ingest_kaggle import pick_subset

from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.evaluation import drift
from entropy_ft.model.factory import build_model
from entropy_ft.model.model_dir import save_model_dir
from entropy_ft.reports import registration_markdown
from entropy_ft.steps import ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import retrain  # noqa: E402

ALPHA, MIN_DELTA = 0.05, 0.005  # the gate's defaults, which the story uses


def test_class_balance_and_intensity_tests_see_a_shift_and_not_its_absence():
    same = drift.class_balance({"a": 500, "b": 500}, {"a": 1000, "b": 1000})
    assert same["total_variation"] == 0 and same["chi2_p"] > 0.99
    moved = drift.class_balance({"a": 500, "b": 500}, {"a": 800, "b": 200, "c": 50})
    assert moved["total_variation"] > 0.3 and moved["chi2_p"] < 1e-6 and moved["reference"]["c"] == 0
    rng = np.random.default_rng(0)
    base = np.c_[rng.normal(0.3, 0.05, 300), rng.normal(0.2, 0.02, 300)]
    assert drift.intensity(base, base + rng.normal(0, 1e-3, base.shape))["mean_p"] > 0.05
    brighter = drift.intensity(base, base + [0.1, 0])
    assert brighter["mean_ks"] > 0.5 and brighter["mean_p"] < 1e-6 and brighter["std_p"] == 1


def test_domain_auc_is_chance_for_one_distribution_and_high_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(120, 64)), rng.normal(size=(120, 64))
    assert abs(drift.domain_auc(a, b, seed=0, permutations=10)["domain_auc"] - 0.5) < 0.15
    shifted = drift.domain_auc(a, b + 0.5, seed=0, permutations=10)
    assert shifted["domain_auc"] > 0.95 and shifted["p_value"] < 0.1


@pytest.fixture(scope="module")
def imagenette_model(weights_dir, tmp_path_factory) -> Path:
    """The shared ResNet18 stand-in weights as a Model dir (64 px): a champion that has seen real images."""
    model, info = build_model("resnet18", 4, str(weights_dir / "resnet18-imagenette.pt"))
    out = tmp_path_factory.mktemp("champion") / "model"
    save_model_dir(out, model, {"arch": "resnet18", "classes": ["glioma", "meningioma", "notumor", "pituitary"],
                                "weights": info.source, "preprocessing": {"image_size": 64, "channels": 3}})
    return out


@pytest.mark.parametrize("image_size", [32, 224])
def test_extends_on_the_kaggle_layout_moves_no_old_image(kaggle_zip, tmp_path, image_size):
    """Week 1 is every other file of a real subset in Kaggle's own layout, week 2 the whole subset, which
    holds 60 of the archive's groups of copies across Training/ and Testing/: with --extends, no week-1 file
    changes split (a Training/ copy used to take its Testing/ twin's split, train into test)."""
    with zipfile.ZipFile(kaggle_zip) as archive:
        subset = make_zip(tmp_path / "kaggle-subset.zip",
                          {n: archive.read(n) for n in pick_subset(archive, cross_split_groups=60)})
    week1_zip, week2_zip = retrain.kaggle_weeks(subset, tmp_path / "weeks")
    week1, week2 = tmp_path / "w1", tmp_path / "w2"
    ingest.run(ingest.Config(sources=(str(week1_zip),), out=str(week1), image_size=image_size))
    summary = ingest.run(ingest.Config(sources=(str(week2_zip),), out=str(week2), image_size=image_size,
                                       extends=str(week1)))

    stability = retrain.split_stability(week1, week2)
    assert stability["in_week2"] == stability["week1_images"] > 100
    assert stability["moved"] == 0 and stability["train_val_now_test"] == 0
    extends = load_manifest(week2).splits["extends"]
    assert extends["moved"] == 0 and extends["kept"] == stability["week1_images"]
    assert extends["followed"] > 0  # new copies of old images took their split
    for split in ("train", "val", "test"):  # and every file kept to its folder: Testing/ is test, Training/ is not
        folders = {s.split("/")[1] for s in read_split(week2, split, ["source"]).column("source").to_pylist()}
        assert folders == ({"Testing"} if split == "test" else {"Training"})
    assert summary["duplicates"]["cross_split_exact_groups"] >= 60


def test_drift_flags_phantoms_against_real_scans_but_not_new_real_scans(kaggle_zip, imagenette_model, tmp_path):
    week1, week2 = retrain.buckets(kaggle_zip, tmp_path / "buckets", per_class=100)
    for name, source in (("week1", week1), ("week2", week2), ("phantoms", "synthetic:200")):
        ingest.run(ingest.Config(sources=(str(source),), out=str(tmp_path / name), image_size=64))
    real = drift.measure(imagenette_model, tmp_path / "week1", tmp_path / "week2", seed=0)
    assert not real["drift"] and real["features"]["domain_auc"] < 0.75
    week2_train = load_manifest(tmp_path / "week2").totals["train"]
    assert 0.3 * week2_train < real["images"]["new_in_candidate"] < 0.7 * week2_train  # only week 2's new half
    assert real["class_balance"]["total_variation"] < 0.05
    fake = drift.measure(imagenette_model, tmp_path / "week1", tmp_path / "phantoms", seed=0)
    assert fake["drift"] and fake["features"]["domain_auc"] > 0.9 and fake["features"]["p_value"] < 0.05
    assert fake["intensity"]["mean_p"] < 0.01
    same = drift.measure(imagenette_model, tmp_path / "week1", tmp_path / "week1", seed=0)
    assert not same["drift"] and same["features"] is None and same["images"]["new_in_candidate"] == 0


@pytest.mark.slow
def test_two_weeks_of_retraining_on_the_real_archive(kaggle_zip, weights_dir, mlflow_server, tmp_path,  # noqa: F811
                                                      monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "retrain-story")
    result = retrain.story(kaggle_zip, weights_dir, tmp_path, image_size=64, epochs=2, per_class=150)

    # no week-1 training or val image is in week 2's test split, and with --extends no old image moved at all
    for how, counts in result["splits"].items():
        assert counts["in_week2"] == counts["week1_images"] > 250, how
        assert counts["train_val_now_test"] == 0, how
    assert result["splits"]["with --extends"]["moved"] == 0

    first, broken, *same_recipe = result["decisions"]
    assert first["promoted"] and first["reason"] == "no champion yet"
    # the broken recipe is worse on the shared images and does not take champion
    evidence = broken["comparison"]["0"]
    assert not broken["promoted"] and evidence["delta"] < 0 and evidence["images"] > 60
    # every decision is what the paired test on the shared images says
    for d in (broken, *same_recipe):
        c = d["comparison"]["0"]
        assert d["promoted"] == (c["delta"] >= MIN_DELTA and c["p_better"] < ALPHA), d["reason"]
        assert c["ci_low"] <= c["delta"] <= c["ci_high"]
    # the second week-2 model faces whichever model is champion by then, never a stale number
    champion = max(int(d["version"]) for d in result["decisions"] if d["promoted"])
    assert int(same_recipe[1]["champion_before"]) == (int(same_recipe[0]["version"]) if same_recipe[0]["promoted"]
                                                      else int(first["version"]))

    import mlflow

    client = mlflow.MlflowClient()
    assert client.get_registered_model(retrain.MODEL).aliases["champion"] == str(champion)
    for d in result["decisions"][1:]:
        assert d["drift"] is not None and not d["drift"]["drift"], d["drift"]
        tags = client.get_model_version(retrain.MODEL, d["version"]).tags
        assert tags["entropy_ft.drift"] == "false" and tags["entropy_ft.dataset_uri"].endswith("week2")
    assert "domain AUC" in retrain.markdown(result)
    report = registration_markdown(broken)
    assert "## Drift against the champion's training data" in report and "chi-square homogeneity" in report

"""External validation (`entropy-ft evaluate MODEL --data OTHER`): classes matched by name, unknown ones
left out, copies of training images counted, on a second layout built from the real Kaggle archive."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl
from PIL import Image, ImageEnhance
from selection_factory import write_selection

from entropy_ft.cli import main
from entropy_ft.data.format import manifest_sha256
from entropy_ft.evaluation.external import class_mapping, duplicate_summary, training_matches

MODEL_CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def test_class_names_map_through_ingest_normalisation():
    mapping = class_mapping(["glioma", "Meningioma Tumour", "no_tumor", "other", "Pituitary-Tumor"], MODEL_CLASSES)
    assert mapping == {"glioma": "glioma", "Meningioma Tumour": "meningioma", "no_tumor": "notumor", "other": None,
                       "Pituitary-Tumor": "pituitary"}
    assert class_mapping(["cats", "dogs"], MODEL_CLASSES) == {"cats": None, "dogs": None}


def _hash(bits_set: list[int]) -> np.ndarray:
    bits = np.zeros(256, np.uint8)
    bits[bits_set] = 1
    return np.packbits(bits)


def test_training_matches_prefer_exact_copies_and_the_earliest_split():
    train_shas = ["a", "b", "a", "c"]
    train_splits = ["test", "val", "train", "val"]
    train_hashes = np.stack([_hash([]), _hash(list(range(100, 140))), _hash([]), _hash(list(range(200, 256)))])
    shas = ["a", "x", "y", "z"]
    hashes = np.stack([_hash(list(range(200, 256))),  # exact copy of "a" (train and test) though its hash is "c"'s
                       _hash(list(range(100, 130))),  # 10 bits from "b": near, in val
                       _hash(list(range(100, 120))),  # 20 bits from "b": not a copy
                       _hash(list(range(200, 250)))])  # 6 bits from "c"
    matches = training_matches(train_shas, train_hashes, train_splits, shas, hashes)
    assert matches == [("exact", "train"), ("near", "val"), None, ("near", "val")]
    assert duplicate_summary(matches) == {"images": 4, "duplicates": 3, "exact": 1, "near": 2,
                                          "by_split": {"train": 1, "val": 2, "test": 0}}
    assert training_matches([], np.empty((0, 32), np.uint8), [], shas, hashes) == [None] * 4


def _files(archive: zipfile.ZipFile, split: str, cls: str) -> list[str]:
    return sorted(n for n in archive.namelist() if n.startswith(f"{split}/{cls}/") and not n.endswith("/"))


@pytest.fixture(scope="module")
def world(kaggle_zip, tmp_path_factory) -> dict:
    """A model trained on about 80 Kaggle images (kaggle layout, 64 px), and external folders in another layout:
    renamed class folders, an unknown class, no pituitary, two byte copies and one brightened copy of
    training images; the same folder without the copies; one with no class the model knows."""
    tmp = tmp_path_factory.mktemp("external")
    with zipfile.ZipFile(kaggle_zip) as archive, zipfile.ZipFile(tmp / "train.zip", "w") as out:
        for cls in MODEL_CLASSES:
            for name in _files(archive, "Training", cls)[:16] + _files(archive, "Testing", cls)[:4]:
                out.writestr(name, archive.read(name))
        ext, unseen, foreign = tmp / "external", tmp / "unseen", tmp / "foreign"

        def put(folder: str, name: str, data: bytes, *roots: Path) -> None:
            for root in roots:
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / name).write_bytes(data)

        for folder, cls, n in (("glioma_tumor", "glioma", 5), ("no_tumor", "notumor", 5),
                               ("Meningioma Tumour", "meningioma", 3), ("other", "pituitary", 3)):
            for name in _files(archive, "Testing", cls)[10:10 + n]:
                put(folder, name.rsplit("/", 1)[1], archive.read(name), ext, unseen)
        glioma = _files(archive, "Training", "glioma")
        for name in glioma[:2]:
            put("glioma_tumor", "copy-" + name.rsplit("/", 1)[1], archive.read(name), ext)
        brighter = io.BytesIO()
        ImageEnhance.Brightness(Image.open(io.BytesIO(archive.read(glioma[2])))).enhance(1.08).save(brighter, "PNG")
        put("glioma_tumor", "brighter.png", brighter.getvalue(), ext)
        for cls, folder in (("glioma", "cats"), ("notumor", "dogs")):
            for name in _files(archive, "Testing", cls)[20:22]:
                put(folder, name.rsplit("/", 1)[1], archive.read(name), foreign)
    assert main(["ingest", str(tmp / "train.zip"), "--out", str(tmp / "train"), "--image-size", "64"]) == 0
    selection = write_selection(tmp / "selection.json", "resnet18", "head")
    assert main(["finetune", str(tmp / "train"), str(selection), "--out", str(tmp / "model"), "--epochs", "1",
                 "--batch-size", "32", "--precision", "fp32", "--device", "cpu"]) == 0
    return {"tmp": tmp, "model": tmp / "model", "train": tmp / "train", "external": ext, "unseen": unseen,
            "foreign": foreign}


def _evaluate(world, out: Path, *args: str) -> dict:
    assert main(["evaluate", str(world["model"]), "--out", str(out), "--noise", "0,0.2", *args]) == 0
    return json.loads((out / "eval.json").read_text())


def test_external_data_maps_classes_leaves_out_unknown_ones_and_counts_copies(world, tmp_path):
    report = _evaluate(world, tmp_path / "ext", "--data", str(world["external"]), "--training-data",
                       str(world["train"]))
    section = report["external"]
    assert section["folders"] == {"glioma_tumor": "glioma", "Meningioma Tumour": "meningioma", "no_tumor": "notumor"}
    assert section["classes"] == {"glioma": "glioma", "meningioma": "meningioma", "notumor": "notumor", "other": None}
    assert section["images"] == {"glioma": 8, "meningioma": 3, "notumor": 5, "other": 3}
    assert section["unknown"] == {"other": 3} and section["missing"] == ["pituitary"]
    assert section["scored"] == report["num_images"] == 16 and report["split"] == "all"
    assert sum(map(sum, report["confusion_matrix"])) == 16 and sum(report["confusion_matrix"][3]) == 0
    duplicates = section["duplicates"]
    assert (duplicates["duplicates"], duplicates["exact"], duplicates["near"]) == (3, 2, 1)
    assert sum(duplicates["by_split"].values()) == 3 and duplicates["training_data"] == str(world["train"])
    assert section["ingested_at"] == 64 and report["dataset"] == str(world["external"])
    assert report["model_data_manifest_sha256"] == manifest_sha256(world["train"])
    # the unseen figures are those of the same folder without the three copies, scored on its own
    alone = _evaluate(world, tmp_path / "unseen", "--data", str(world["unseen"]), "--training-data",
                      str(world["train"]))
    assert alone["external"]["duplicates"]["duplicates"] == 0 and alone["num_images"] == 13
    assert section["unseen"] == {"images": 13, "accuracy": pytest.approx(alone["accuracy"]),
                                 "macro_f1": pytest.approx(alone["macro_f1"]),
                                 "balanced_accuracy": pytest.approx(alone["balanced_accuracy"])}
    assert all(s["source"].startswith("external/") and s["class"] != "other" for s in report["gradcam"]["images"])
    html = (tmp_path / "ext" / "eval.html").read_text()
    assert "<h2>External validation</h2>" in html and "glioma (glioma_tumor)" in html
    assert "unknown: left out" in html and "On the 13 unseen images alone" in html


def test_a_dataset_as_external_data_and_without_the_training_data(world, tmp_path, caplog):
    report = _evaluate(world, tmp_path / "self", "--data", str(world["train"]), "--training-data", str(world["train"]),
                       "--gradcam", "0")
    section = report["external"]
    assert section["ingested_at"] is None and report["dataset_manifest_sha256"] == manifest_sha256(world["train"])
    images = sum(json.loads((world["train"] / "manifest.json").read_text())["totals"].values())
    assert section["scored"] == section["duplicates"]["exact"] == images > 70 and section["unseen"] == {"images": 0}
    assert "No image is unseen" in (tmp_path / "self" / "eval.html").read_text()
    unchecked = _evaluate(world, tmp_path / "unchecked", "--data", str(world["unseen"]), "--gradcam", "0")
    assert unchecked["external"]["duplicates"] is None and unchecked["external"]["unseen"] is None
    assert "not checked for copies of training images (pass --training-data)" in caplog.text


def test_external_data_with_no_class_the_model_knows_exits_2(world, tmp_path, capsys):
    assert main(["evaluate", str(world["model"]), "--data", str(world["foreign"]), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"entropy-ft evaluate: error: --data {world['foreign']}: none of its classes (cats, dogs)")
    assert not (tmp_path / "e").exists()


def test_training_data_must_be_the_models(world, tmp_path, capsys):
    other = world["tmp"] / "other-train"
    shutil.copytree(world["train"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["seed"] = 1  # another dataset: another manifest sha256
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main(["evaluate", str(world["model"]), "--data", str(world["unseen"]), "--training-data", str(other),
                 "--out", str(tmp_path / "e")]) == 2
    assert f"--training-data {other}: not the Dataset this model was trained on" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    ([], "give the DATASET to evaluate or --data SOURCE"),
    (["D", "--data", "X"], "not both"),
    (["D", "--training-data", "T"], "--training-data T: only for external validation (--data)"),
])
def test_evaluate_wants_one_kind_of_data(args, message, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "model"), *args, "--out", str(tmp_path / "e")]) == 2
    assert message in capsys.readouterr().err


def test_the_pipeline_component_logs_into_the_runs_mlflow_run(world, tmp_path, monkeypatch):
    """What the training pipeline's evaluate-external task does with finetune's run id."""
    from mlflow import MlflowClient

    from entropy_ft.pipelines.definitions import _components
    from entropy_ft.tracking import runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ENTROPY_FT_HOME", str(tmp_path))
    run_id = runs.ensure_run(None, "external-test")
    evaluation, plot, metrics = (dsl.Artifact(uri=str(tmp_path / "ev")), dsl.HTML(uri=str(tmp_path / "ev.html")),
                                 dsl.Metrics(uri=str(tmp_path / "m")))
    _components(None)["evaluate_external"].python_func(
        model=dsl.Model(uri=str(world["model"])), training_data=dsl.Dataset(uri=str(world["train"])),
        data=str(world["external"]), noise="0,0.2", seed=0, mlflow_run_id=run_id, evaluation=evaluation, plot=plot,
        metrics=metrics)
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(run_id).data.metrics
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert logged["external_accuracy"] == pytest.approx(report["accuracy"])
    assert logged["external_macro_f1_sigma_0.2"] == pytest.approx(report["noise"][1]["macro_f1"])
    assert (logged["external_scored"], logged["external_unknown_images"], logged["external_duplicates"],
            logged["external_duplicates_exact"], logged["external_unseen_images"]) == (16, 3, 3, 2, 13)
    assert not any(k.startswith("test_") for k in logged)  # the run's own test figures stay register's
    files = {f.path for f in client.list_artifacts(run_id, "external")}
    assert files == {"external/eval.json", "external/eval.html", "external/eval.png", "external/gradcam.png"}
    assert "<h2>External validation</h2>" in Path(plot.path).read_text()
    assert metrics.metadata["external_duplicates"] == 3

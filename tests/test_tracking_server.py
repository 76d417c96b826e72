"""MLflow against real servers: ``mlflow server`` with SQLite and S3 artifacts on moto.

The steps log in sequence to one run, ``register`` creates versions behind the gate, the
champion serves real Kaggle JPEGs, and faults (server down, a registration that fails half
way) move no alias and leak no credential. Against MLflow's ``basic-auth`` app (the production
overlay's server): anonymous requests get 401, the pipeline's user registers, and a refused
login or a missing permission exits 2 with one line, moving no alias and leaking no password.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import boto3
import numpy as np
import pytest
from mlflow_server import mlflow_auth_server, mlflow_server  # noqa: F401  (pytest fixtures)

from entropy_ft import cli
from entropy_ft.data.loader import IMAGENET_MEAN, IMAGENET_STD
from entropy_ft.data.synthetic import CLASSES
from entropy_ft.errors import UserError
from entropy_ft.model.factory import build_model
from entropy_ft.model.model_dir import save_model_dir
from entropy_ft.tracking import registry
from entropy_ft.tracking import runs as tracking

MARKER = "Zq7-marker-not-a-real-secret-91x"  # credentials set to this must appear nowhere
MODEL = "test-brain-mri"
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A SqueezeNet 1.1 (random init, 4 classes; 5 MB of weights, so uploads stay quick) Model dir,
    as `entropy-ft finetune` writes it."""
    out = tmp_path_factory.mktemp("model") / "model"
    model, info = build_model("squeezenet1_1", len(CLASSES), "none")
    selection = {"strategy": "entropy", "rule": "below-mean", "seed": 0, "layers": ["features.0", "features.3.squeeze"],
                 "trainable_params": 3_000, "full_params": 724_548, "reduction_vs_full": 0.996}
    meta = {
        "arch": "squeezenet1_1", "classes": CLASSES, "weights": info.source, "weights_sha256": info.sha256,
        "preprocessing": {"image_size": IMAGE_SIZE, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "channels": 3, "mode": "L"},
        "selection": selection, "training": {"config": {"epochs": 3, "lr": 0.001, "batch_size": 8}},
        "data_manifest_sha256": "d" * 64,
    }
    save_model_dir(out, model, meta)
    return out


def write_eval(path: Path, macro_f1: float) -> str:
    """An eval.json whose figures the gate compares (macro-F1 at sigma 0 is the default metric)."""
    rows = [{"sigma": s, "accuracy": macro_f1 - s, "macro_f1": macro_f1 - s, "balanced_accuracy": macro_f1 - s,
             "per_class_recall": {c: macro_f1 for c in CLASSES}, "confusion_matrix": np.eye(4, dtype=int).tolist()}
            for s in (0.0, 0.1, 0.2)]
    doc = {"schema_version": 1, "arch": "squeezenet1_1", "classes": CLASSES, "split": "test", "noise": rows, **rows[0]}
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture
def server_env(mlflow_server, monkeypatch):  # noqa: F811
    """This process talks to the test server, with credentials set to the marker everywhere."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "entropy-ft-tests")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tester")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MARKER)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MARKER)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    return mlflow_server


def bucket_objects(server) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=server.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # not the marker this process has
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=server.bucket)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=server.bucket, Key=k)["Body"].read() for k in keys}


def register(capfd, model_dir: Path, eval_uri: str, *extra: str) -> tuple[int, dict | None, str]:
    """`entropy-ft register` through the CLI: exit code, JSON summary, stderr."""
    code = cli.main(["register", str(model_dir), "--eval", eval_uri, "--model-name", MODEL, *extra])
    out, err = capfd.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def aliases(client) -> dict[str, str]:
    return dict(client.get_registered_model(MODEL).aliases)


def test_steps_log_one_run_and_register(server_env, model_dir, tmp_path, capfd):
    client = tracking.connect()
    run_id = tracking.ensure_run(None, "pipeline-test", tracking.pipeline_tags("kfp-run-1", "nightly-1", "training"))
    assert tracking.ensure_run(run_id) == run_id  # the next step reattaches
    with pytest.raises(UserError, match="no such MLflow run"):
        tracking.ensure_run("0" * 32)
    profile = {"arch": "squeezenet1_1", "weights": "none", "weights_sha256": None, "classes": CLASSES, "num_classes": 4,
               "dataset_manifest_sha256": "d" * 64, "image_size": IMAGE_SIZE, "estimator": "histogram",
               "bins": 64, "tap": "conv", "num_images": 16, "layers": []}
    from PIL import Image

    (tmp_path / "profile.json").write_text(json.dumps(profile))
    Image.new("RGB", (8, 8), "red").save(tmp_path / "profile.png")  # plots sit beside their JSON
    eval_uri = write_eval(tmp_path / "eval.json", 0.70)
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "eval.png")
    Image.new("RGB", (8, 8), "green").save(tmp_path / "gradcam.png")  # evaluate's Grad-CAM overlays
    (tmp_path / "eval.html").write_text("<html><h2>Where the model looks (Grad-CAM)</h2></html>")
    with tracking.active_run(run_id):  # what the finetune component does around training
        on_epoch_end = tracking.epoch_logger(run_id)
        for epoch in (1, 2, 3):
            on_epoch_end(epoch, {"epoch": epoch, "train_loss": 1.0 / epoch, "val_accuracy": 0.3 + 0.1 * epoch})
        time.sleep(1.5)  # let the system-metrics sampler (0.5 s here) publish
    code, summary, err = register(capfd, model_dir, eval_uri, "--run-id", run_id,
                                  "--profile", str(tmp_path / "profile.json"))
    assert code == 0, err
    assert summary["promoted"] and summary["champion"] == summary["version"] and summary["run_id"] == run_id

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kfp.run_id"] == "kfp-run-1" and run.data.tags["kfp.pipeline_name"] == "training"
    params = run.data.params
    assert params["arch"] == "squeezenet1_1" and params["profile.estimator"] == "histogram"
    assert params["selection.strategy"] == "entropy" and params["train.lr"] == "0.001"
    assert json.loads(params["classes"]) == CLASSES
    history = client.get_metric_history(run_id, "val_accuracy")
    steps = [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)]
    assert steps == [(1, 0.4), (2, 0.5), (3, 0.6)]
    assert run.data.metrics["test_macro_f1"] == pytest.approx(0.70)
    assert run.data.metrics["test_macro_f1_sigma_0.2"] == pytest.approx(0.50)
    assert len(client.get_metric_history(run_id, "test_macro_f1_vs_sigma_pct")) == 3
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)

    version = client.get_model_version(MODEL, summary["version"])
    assert version.status == "READY" and version.run_id == run_id
    assert version.tags["entropy_ft.gate.promoted"] == "true"
    assert float(version.tags[registry.GateMetric("macro_f1").tag]) == pytest.approx(0.70)
    assert aliases(client) == {"champion": summary["version"], "challenger": summary["version"]}

    objects = bucket_objects(server_env)
    names = {k.rsplit("/", 1)[-1] for k in objects if run_id in k}
    assert {"profile.json", "eval.json", "selection.json", "profile.png", "eval.png", "gradcam.png",
            "eval.html"} <= names
    paths = {f.path for folder in (None, "plots") for f in client.list_artifacts(run_id, folder)}
    assert {"eval.html", "plots/eval.png", "plots/gradcam.png"} <= paths
    assert any(k.endswith("weights.safetensors") for k in objects), "the model's weights are not in the bucket"

    # no credential anywhere: params, tags, metrics names, every artifact in the bucket, stderr
    logged = json.dumps([params, run.data.tags, list(run.data.metrics), version.tags, summary]) + err
    assert MARKER not in logged
    leaked = [k for k, body in objects.items() if MARKER.encode() in body]
    assert not leaked, leaked


def test_the_version_carries_a_model_card_and_the_run_its_dataset_inputs(server_env, model_dir, tmp_path, capfd,
                                                                          synthetic_dataset):
    """What a reviewer sees in the MLflow UI: a model card as the version's and the run's description,
    and the train, val and test splits as the run's dataset inputs, each with the manifest's digest."""
    from entropy_ft.data.format import load_manifest, manifest_sha256

    eval_uri = write_eval(tmp_path / "eval.json", 0.71)
    code, summary, err = register(capfd, model_dir, eval_uri, "--dataset", str(synthetic_dataset), "--promote", "never")
    assert code == 0, err
    client = tracking.connect()
    card = client.get_model_version(MODEL, summary["version"]).description
    digest = manifest_sha256(synthetic_dataset)
    for part in ("## Intended use", "## Data", digest, "**The model was trained on other data** (manifest sha256 "
                 f"`{'d' * 64}`)", "## Test metrics", "## Registration gate", "not promoted: --promote never",
                 "## Limitations"):
        assert part in card, part
    run = client.get_run(summary["run_id"])
    assert run.data.tags["mlflow.note.content"] == card
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    totals = load_manifest(synthetic_dataset).totals
    for context, split in (("training", "train"), ("validation", "val"), ("testing", "test")):
        assert inputs[context].digest == digest[:16] and inputs[context].name == f"synthetic-{split}"
        assert json.loads(inputs[context].profile)["num_rows"] == totals[split]
    assert MARKER not in card


def test_a_dataset_that_cannot_be_read_exits_2_and_registers_nothing(server_env, model_dir, tmp_path, capfd):
    client = tracking.connect()
    before = len(client.search_model_versions(f"name='{MODEL}'")) if _model_exists(client) else 0
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "eval.json", 0.7), "--dataset",
                            str(tmp_path / "missing"))
    assert code == 2 and "missing/manifest.json: no such file" in err
    after = len(client.search_model_versions(f"name='{MODEL}'")) if _model_exists(client) else 0
    assert after == before


def _model_exists(client) -> bool:
    return bool(client.search_registered_models(f"name='{MODEL}'"))


@pytest.fixture(scope="module")
def gate_data(tmp_path_factory) -> Path:
    """320 phantoms at 48 px (48 test images): enough for a trained model to beat a random one beyond chance."""
    from entropy_ft.steps import ingest

    out = tmp_path_factory.mktemp("gate") / "phantoms"
    ingest.run(ingest.Config(sources=("synthetic:320",), out=str(out), image_size=48, seed=0))
    return out


@pytest.fixture(scope="module")
def trained_model_dir(gate_data, tmp_path_factory) -> Path:
    """A resnet18 fine-tuned for 4 epochs on the phantoms: far better than the random SqueezeNet."""
    from selection_factory import write_selection

    tmp = tmp_path_factory.mktemp("trained")
    selection = write_selection(tmp / "selection.json", "resnet18", "full")
    assert cli.main(["finetune", str(gate_data), str(selection), "--out", str(tmp / "model"), "--epochs", "4",
                     "--batch-size", "16", "--precision", "fp32", "--device", "cpu"]) == 0
    return tmp / "model"


def test_gate_decides_head_to_head_on_the_same_images(server_env, model_dir, trained_model_dir, gate_data, tmp_path,
                                                      capfd):
    """The champion is re-evaluated on the candidate's gate images: an identical model ties and stays out,
    a far better one takes champion on a paired test, and a worse one never does, whatever eval.json says."""
    client = tracking.connect()
    name = ["--model-name", "gate-test", "--dataset", str(gate_data)]

    def gate_aliases() -> dict:
        return dict(client.get_registered_model("gate-test").aliases)

    code, first, err = register(capfd, model_dir, write_eval(tmp_path / "e1.json", 0.30), *name)
    assert code == 0 and first["promoted"] and first["reason"] == "no champion yet", err

    code, same, err = register(capfd, model_dir, write_eval(tmp_path / "same.json", 0.99), *name)  # a rosy eval.json
    assert code == 0, err
    assert not same["promoted"] and "below --gate-min-delta" in same["reason"], same["reason"]
    shared = same["comparison"]["0"]
    assert shared["delta"] == 0 and shared["images"] == 48 and shared["candidate"] == shared["champion"]

    code, better, err = register(capfd, trained_model_dir, write_eval(tmp_path / "better.json", 0.10), *name)
    assert code == 0, err
    assert better["promoted"] and "beats champion v1" in better["reason"], better["reason"]
    evidence = better["comparison"]["0"]
    assert evidence["delta"] >= 0.2 and evidence["p_better"] < 0.05 and evidence["ci_low"] > 0
    version = client.get_model_version("gate-test", better["version"])
    assert float(version.tags["entropy_ft.gate.p_better"]) == evidence["p_better"]
    assert gate_aliases() == {"champion": better["version"], "challenger": better["version"]}
    from entropy_ft.reports import registration_markdown

    report = registration_markdown(better)
    assert "## Head to head with the champion, on the same images" in report and "| 0 | macro_f1 | 48 |" in report

    code, worse, err = register(capfd, model_dir, write_eval(tmp_path / "worse.json", 0.99), *name,
                                "--gate-metric", "accuracy")
    assert code == 0 and not worse["promoted"], err
    assert worse["comparison"]["0"]["delta"] < 0 and "McNemar" in worse["comparison"]["0"]["test"]
    assert gate_aliases() == {"champion": better["version"], "challenger": worse["version"]}

    code, blind, err = register(capfd, model_dir, write_eval(tmp_path / "blind.json", 0.99), "--model-name",
                                "gate-test")  # no data to compare on: no evidence, no promotion
    assert code == 0 and not blind["promoted"] and "no data to compare them on" in blind["reason"], err

    code, forced, err = register(capfd, model_dir, write_eval(tmp_path / "forced.json", 0.1), *name,
                                 "--promote", "always")
    assert code == 0 and forced["promoted"], err
    assert gate_aliases()["champion"] == forced["version"]


def test_two_register_steps_at_once_decide_one_after_the_other(server_env, model_dir, trained_model_dir, gate_data,
                                                               tmp_path, capfd):
    """A scheduled run and a manual submit finish together: two `entropy-ft register` processes started at
    once against one champion. The registry lock makes them decide in turn, so the second compares with what
    the first left, the better model ends as champion, and each version's tags say what it decided against."""
    client = tracking.connect()
    name = ["--model-name", "race-test", "--dataset", str(gate_data)]
    code, first, err = register(capfd, model_dir, write_eval(tmp_path / "e0.json", 0.3), *name)
    assert code == 0 and first["promoted"], err

    def start(model: Path, eval_name: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "entropy_ft.cli", "register", str(model), "--eval",
                write_eval(tmp_path / eval_name, 0.5), *name]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "ENTROPY_FT_NO_PROGRESS": "1"})

    procs = [start(trained_model_dir, "better.json"), start(model_dir, "tie.json")]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    better, tie = results
    assert better["promoted"] and not tie["promoted"], (better["reason"], tie["reason"])
    assert dict(client.get_registered_model("race-test").aliases)["champion"] == better["version"]
    first_to_decide, second = sorted(results, key=lambda r: int(r["version"]))
    assert first_to_decide["champion_before"] == first["version"]  # versions are made under the lock, in turn
    assert second["champion_before"] == (first_to_decide["version"] if first_to_decide["promoted"]
                                         else first["version"])
    for r in results:
        tags = client.get_model_version("race-test", r["version"]).tags
        assert tags["entropy_ft.gate.champion_before"] == r["champion_before"]
        assert tags["entropy_ft.gate.promoted"] == str(r["promoted"]).lower()


def test_bad_gate_flags_exit_2(server_env, model_dir, tmp_path, capfd):
    eval_uri = write_eval(tmp_path / "e.json", 0.5)
    code, _, err = register(capfd, model_dir, eval_uri, "--gate-alpha", "2")
    assert code == 2 and "--gate-alpha 2: expected a fraction between 0 and 1" in err
    other = tmp_path / "cats"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"classes": ["cat", "dog"], "image_size": 32,
                                                      "image_encoding": "raw-uint8-hwc", "shards": []}))
    code, _, err = register(capfd, model_dir, eval_uri, "--gate-data", str(other))
    assert code == 2 and f"--gate-data {other / 'manifest.json'}: its classes ['cat', 'dog'] are not the model's" in err


def kaggle_jpegs(kaggle_zip: Path, n_per_class: int = 2) -> tuple[list[bytes], list[str]]:
    images, labels = [], []
    with zipfile.ZipFile(kaggle_zip) as zf:
        names = sorted(zf.namelist())
        for cls in CLASSES:
            picked = [n for n in names if n.startswith(f"Testing/{cls}/") and n.lower().endswith(".jpg")][:n_per_class]
            images += [zf.read(n) for n in picked]
            labels += [cls] * len(picked)
    return images, labels


def test_champion_serves_kaggle_jpegs(server_env, model_dir, tmp_path, capfd, kaggle_zip):
    import mlflow.pyfunc
    import pandas as pd

    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "e.json", 0.9), "--promote", "always")
    assert code == 0, err
    images, _ = kaggle_jpegs(kaggle_zip)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict(pd.DataFrame({"image": images}))
    assert list(out.columns) == ["predicted_class", *CLASSES]
    assert len(out) == len(images) == 8
    probs = out[CLASSES].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()
    assert set(out["predicted_class"]) <= set(CLASSES)
    assert (out["predicted_class"] == np.array(CLASSES)[probs.argmax(axis=1)]).all()

    # `mlflow models serve` takes the same column over REST, base64-encoded
    served = serve_and_predict(f"models:/{MODEL}@champion", images[:3], tmp_path)
    assert list(served.columns) == ["predicted_class", *CLASSES]
    assert np.allclose(served[CLASSES].to_numpy(), probs[:3], atol=1e-6)


def serve_and_predict(model_uri: str, images: list[bytes], tmp_path: Path):
    import pandas as pd
    from mlflow_server import free_port, stop, wait_healthy

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # it execs uvicorn
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(url, proc, log, 90)
        payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()] for b in images]}}
        request = urllib.request.Request(f"{url}/invocations", json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            return pd.DataFrame(json.loads(resp.read())["predictions"])
    finally:
        stop(proc)


def test_server_down_fails_fast_and_moves_no_alias(server_env, model_dir, tmp_path, capfd, monkeypatch):
    from mlflow_server import free_port

    client = tracking.connect()
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "e.json", 0.5))
    assert code == 0, err
    before = aliases(client)

    down = f"http://tester:{MARKER}@127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    started = time.monotonic()
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "better.json", 0.99), "--promote", "always")
    elapsed = time.monotonic() - started
    assert code == 2
    assert "http://***@127.0.0.1:" in err and MARKER not in err
    assert 1.0 < elapsed < 40, elapsed  # retried with backoff, within the budget
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_env.url)
    assert aliases(tracking.connect()) == before


def test_registration_failing_half_way_moves_no_alias(server_env, model_dir, tmp_path, capfd, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    client = tracking.connect()
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "e.json", 0.5))
    assert code == 0, err
    before = aliases(client)
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))

    real = mlflow.register_model

    def register_then_fail(*args, **kwargs):
        real(*args, **kwargs)  # the version exists, then the connection drops
        raise MlflowException("connection reset by peer")

    monkeypatch.setattr(mlflow, "register_model", register_then_fail)
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "better.json", 0.99), "--promote", "always")
    assert code == 2 and "connection reset" in err
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before + 1
    assert aliases(client) == before
    failed = client.search_runs([tracking.experiment_id()], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert failed.info.status == "FAILED"


def test_server_back_during_the_retries_registers_once(server_env, model_dir, tmp_path, capfd, monkeypatch):
    """The tracking server is unreachable when register starts and comes back within its retries
    (tracking.HTTP_RETRY_DEFAULTS: 3 retries, backoff factor 1): the step succeeds, one version, one
    champion."""
    import threading

    from mlflow_server import free_port
    from proxies import DroppingProxy

    client = tracking.connect()
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    port = free_port()
    proxies: list[DroppingProxy] = []
    late = threading.Timer(1.5, lambda: proxies.append(DroppingProxy(server_env.url, port=port)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")  # refused until the proxy listens
    late.start()
    try:
        code, summary, err = register(capfd, model_dir, write_eval(tmp_path / "e.json", 0.97), "--promote", "always")
    finally:
        late.join()
        for proxy in proxies:
            proxy.close()
    assert code == 0, err
    assert proxies and proxies[0].sent > 0  # everything went through the late server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_env.url)
    client = tracking.connect()
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before + 1
    assert aliases(client)["champion"] == str(summary["version"])


def test_a_connection_cut_while_the_model_uploads_moves_no_alias(server_env, model_dir, tmp_path, capfd,
                                                                  monkeypatch):
    """The connection to the tracking server (which proxies the artifact store) is cut after 1 MB of the
    5 MB model: exit 2 in one line, no version takes the alias, the run is marked failed; a rerun registers."""
    from proxies import DroppingProxy

    client = tracking.connect()
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "e.json", 0.5))
    assert code == 0, err
    before = aliases(client)
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    proxy = DroppingProxy(server_env.url, budget=1_000_000)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    try:
        code, _, err = register(capfd, model_dir, write_eval(tmp_path / "better.json", 0.99), "--promote", "always")
    finally:
        proxy.close()
    assert proxy.cut and code == 2, err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("entropy-ft register: error:")] == [lines[-1]]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_env.url)
    client = tracking.connect()
    assert aliases(client) == before
    new = client.search_model_versions(f"name='{MODEL}'")[versions_before:]
    assert all("champion" not in v.aliases for v in new)
    code, summary, err = register(capfd, model_dir, write_eval(tmp_path / "better.json", 0.99), "--promote", "always")
    assert code == 0, err
    assert aliases(client)["champion"] == str(summary["version"])


# --------------------------------------------------------------------------- authentication

AUTH_EXPERIMENT = "entropy-ft-auth-tests"
PIPELINE_USER = "pipeline"  # its password is MARKER: what the entropy-ft-mlflow Secret holds
VIEWER = ("viewer", "viewer-password-not-a-secret")  # a colleague with the default permission, READ
WRONG = "Wr0ng-" + MARKER[::-1]


def http(url: str, body: dict | None = None, auth: tuple[str, str] | None = None):
    """Status and headers (case-insensitive) of a GET, or of a JSON POST when ``body`` is given, with HTTP basic
    auth when given."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


@pytest.fixture(scope="module")
def auth_users(mlflow_auth_server):  # noqa: F811
    """The admin creates the pipeline's user and a viewer through the REST call docs/deploy.md shows."""
    for user, password in ((PIPELINE_USER, MARKER), VIEWER):
        status, _ = http(f"{mlflow_auth_server.url}/api/2.0/mlflow/users/create",
                         {"username": user, "password": password}, mlflow_auth_server.admin)
        assert status == 200, (user, status)
    return mlflow_auth_server


@pytest.fixture
def auth_env(auth_users, monkeypatch):
    """This process is a pipeline pod: the tracking URI and the pipeline user's credentials in the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_users.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", AUTH_EXPERIMENT)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MARKER)
    return auth_users


def test_anonymous_and_wrong_logins_are_refused(mlflow_auth_server):  # noqa: F811
    url, admin = mlflow_auth_server.url, mlflow_auth_server.admin
    paths = ["/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow/registered-models/search",
             "/api/2.0/mlflow/metrics/get-history?run_id=0&metric_key=m", "/api/2.0/mlflow-artifacts/artifacts", "/"]
    for path in paths:
        status, headers = http(url + path)
        assert status == 401, path
        assert headers.get("WWW-Authenticate", "").startswith("Basic"), path  # the browser asks for a login
        assert http(url + path, auth=(admin[0], WRONG))[0] == 401, path
    assert http(url + paths[0], auth=admin)[0] == 200
    assert http(f"{url}/health")[0] == 200  # the probes need no login


def _auth_client(server):
    """A client that logs in as the pipeline's user, whatever this process's environment says."""
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", MARKER)
        client = MlflowClient(server.url, server.url)
        return {"aliases": dict(client.get_registered_model(MODEL).aliases),
                "versions": len(client.search_model_versions(f"name='{MODEL}'"))}


@pytest.fixture(scope="module")
def registered(auth_users, model_dir, tmp_path_factory) -> tuple[dict, str]:
    """One registration as the pipeline's user (``--promote always``), in a process of its own like a pipeline
    pod: its JSON summary and stderr. The tests below share it, because one registration against basic-auth
    takes about 30 s on 2 cores."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": auth_users.url, "MLFLOW_EXPERIMENT_NAME": AUTH_EXPERIMENT,
           "MLFLOW_TRACKING_USERNAME": PIPELINE_USER, "MLFLOW_TRACKING_PASSWORD": MARKER}
    eval_uri = write_eval(tmp_path_factory.mktemp("registered") / "eval.json", 0.6)
    proc = subprocess.run([sys.executable, "-m", "entropy_ft.cli", "register", str(model_dir), "--eval", eval_uri,
                           "--model-name", MODEL, "--promote", "always"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_register_logs_in_as_the_pipeline_user_and_leaks_no_password(auth_env, registered):
    summary, err = registered
    state = _auth_client(auth_env)
    assert state["aliases"] == {"champion": summary["version"], "challenger": summary["version"]}

    from mlflow import MlflowClient

    client = MlflowClient(auth_env.url, auth_env.url)
    run = client.get_run(summary["run_id"])
    version = client.get_model_version(MODEL, summary["version"])
    objects = {k: v for k, v in bucket_objects(auth_env).items() if k.startswith(auth_env.prefix + "/")}
    assert any(k.endswith("weights.safetensors") for k in objects), "the model's weights are not in the bucket"
    written = json.dumps([run.data.params, run.data.tags, version.tags, version.description, summary]) + err
    assert MARKER not in written
    assert not [k for k, body in objects.items() if MARKER.encode() in body]
    assert MARKER not in auth_env.log.read_text(errors="replace")  # nor in the server's own log


@pytest.mark.parametrize("login", ["wrong password", "no credentials"])
def test_refused_login_exits_2_in_one_line_and_moves_no_alias(auth_env, registered, model_dir, tmp_path, capfd,
                                                               monkeypatch, login):
    before = _auth_client(auth_env)  # the experiment and the model exist, owned by the pipeline's user

    if login == "wrong password":
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", WRONG)
        who = f"for user '{PIPELINE_USER}'"
    else:  # the optional entropy-ft-mlflow Secret was never created
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        who = "without MLFLOW_TRACKING_USERNAME"
    started = time.monotonic()
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "better.json", 0.99), "--promote", "always")
    assert code == 2
    assert time.monotonic() - started < 30  # a 401 is not retried
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith(f"entropy-ft register: error: MLflow tracking at {auth_env.url}: authentication failed "
                           f"{who} (HTTP 401)"), line
    assert "Traceback" not in err and WRONG not in err and MARKER not in err
    assert _auth_client(auth_env) == before  # no alias moved, no version created


def test_a_user_without_edit_permission_is_told_so(auth_env, registered, model_dir, tmp_path, capfd, monkeypatch):
    before = _auth_client(auth_env)  # the experiment and the model exist, owned by the pipeline's user

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", VIEWER[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", VIEWER[1])
    code, _, err = register(capfd, model_dir, write_eval(tmp_path / "better.json", 0.99), "--promote", "always")
    assert code == 2 and "Traceback" not in err
    assert f"MLflow tracking at {auth_env.url}: permission denied to user '{VIEWER[0]}' (HTTP 403)" in err, err
    assert _auth_client(auth_env) == before

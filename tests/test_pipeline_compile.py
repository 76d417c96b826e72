"""The compiled IR YAML: tasks, GPU, retries, caching, secrets, and nothing secret or local in it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from entropy_ft.cli import main
from entropy_ft.pipelines.cluster import default_image

MARKER = "SECRET-MARKER-3f9a1c"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[str, dict, dict]]:
    """Both pipelines compiled by the CLI while credentials sit in the environment."""
    tmp = tmp_path_factory.mktemp("compiled")
    saved = {k: os.environ.get(k) for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
                                            "ENTROPY_FT_PATIENT_SALT")}
    os.environ.update({k: MARKER for k in saved})
    try:
        out = {}
        for name in ("training", "ablation"):
            path = tmp / f"{name}.yaml"
            assert main(["compile", "--pipeline", name, "--out", str(path), "--node-selector", "gpu=h100",
                         "--toleration", "nvidia.com/gpu:NoSchedule"]) == 0
            text = path.read_text()
            docs = list(yaml.safe_load_all(text))
            out[name] = (text, docs[0], docs[1] if len(docs) > 1 else {})
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def test_training_has_every_task_in_order(compiled):
    _, spec, _ = compiled["training"]
    tasks = _tasks(spec)
    assert set(tasks) == {"ingest", "profile", "select", "finetune", "evaluate", "register", "condition-1"}
    assert tasks["finetune"]["dependentTasks"] == ["ingest", "select"]
    assert set(tasks["register"]["dependentTasks"]) == {"evaluate", "finetune", "ingest", "profile", "select"}
    # external validation: only when external_data is given, after finetune, into finetune's MLflow run
    condition = tasks["condition-1"]
    assert condition["taskInfo"]["name"] == "external-validation"
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--external_data'] != ''"
    assert set(condition["dependentTasks"]) == {"finetune", "ingest"}
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"evaluate-external"}
    inputs = inner["evaluate-external"]["inputs"]
    assert inputs["parameters"]["mlflow_run_id"]["componentInputParameter"] == "pipelinechannel--finetune-Output"
    assert inputs["parameters"]["data"]["componentInputParameter"] == "pipelinechannel--external_data"
    assert inputs["artifacts"]["training_data"]["componentInputArtifact"] == "pipelinechannel--ingest-dataset"


def test_ablation_fans_out_over_strategies_and_compares(compiled):
    _, spec, _ = compiled["ablation"]
    tasks = _tasks(spec)
    assert {"ingest", "profile", "compare"} <= set(tasks)
    loop = next(t for t in tasks.values() if "iteratorPolicy" in t or "parameterIterator" in t)
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"select", "finetune", "evaluate"}
    assert spec["root"]["inputDefinitions"]["parameters"]["strategies"]["defaultValue"] == [
        "entropy", "full", "head", "random"]


def test_gpu_resources_and_placement_on_finetune(compiled):
    _, spec, platform = compiled["training"]
    executors = spec["deploymentSpec"]["executors"]
    resources = executors["exec-finetune"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert executors["exec-finetune"]["container"]["image"] == default_image(cuda=True)
    assert executors["exec-ingest"]["container"]["image"] == default_image()
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert k8s["nodeSelector"]["labels"] == {"gpu": "h100"}
    assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    shm = next(m for m in k8s["emptyDirMounts"] if m["mountPath"] == "/dev/shm")
    assert shm["medium"] == "Memory" and shm["volumeName"] == "dshm"


def test_retries_caching_and_secret_references(compiled):
    _, spec, platform = compiled["training"]
    tasks = _tasks(spec)
    for name in ("ingest", "profile"):
        assert tasks[name]["cachingOptions"]["enableCache"] is True
    for name in ("finetune", "register", "select", "evaluate"):
        assert not tasks[name]["cachingOptions"].get("enableCache", False)
    for name in ("ingest", "profile", "finetune", "evaluate", "register"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {name: {s["secretName"] for s in ex.get("secretAsEnv", [])} for name, ex in executors.items()}
    assert secrets["exec-ingest"] == {"entropy-ft-s3", "entropy-ft-patient-salt"}
    assert secrets["exec-profile"] == {"entropy-ft-s3"}  # only ingest hashes patient keys
    [salt] = [s for s in executors["exec-ingest"]["secretAsEnv"] if s["secretName"] == "entropy-ft-patient-salt"]
    assert salt["optional"] is True
    assert salt["keyToEnv"] == [{"secretKey": "ENTROPY_FT_PATIENT_SALT", "envVar": "ENTROPY_FT_PATIENT_SALT"}]
    ingest_env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-ingest"]["container"]["env"]}
    assert ingest_env["ENTROPY_FT_NO_SALT_FILE"] == "1"  # a pod's home dies with it: no salt file there
    assert secrets["exec-register"] == {"entropy-ft-s3", "entropy-ft-mlflow"}
    assert secrets["exec-finetune"] == {"entropy-ft-s3", "entropy-ft-mlflow"}


def _talks_to_mlflow(code: str) -> bool:
    """Whether a component uses entropy_ft.tracking (the MLflow client): in its own code as compiled into its
    executor, or in the step module it runs, read from the source."""
    steps = Path(__file__).resolve().parents[1] / "entropy_ft" / "steps"
    return "entropy_ft.tracking" in code or any(
        "entropy_ft.tracking" in (steps / f"{stage}.py").read_text()
        for stage in re.findall(r"from entropy_ft\.steps import (\w+) as step", code))


@pytest.mark.parametrize("name", ["training", "ablation"])
def test_every_step_that_talks_to_mlflow_can_log_in(compiled, name):
    """The production MLflow refuses anonymous requests: each step that uses the MLflow client gets the tracking
    URI and MLFLOW_TRACKING_USERNAME / _PASSWORD from the optional entropy-ft-mlflow Secret; no other step does."""
    _, pipeline, platform = compiled[name]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    talking = set()
    for executor, spec in executors.items():
        stage = executor.removeprefix("exec-")  # one executor per component, named after it
        code = "\n".join(pipeline["deploymentSpec"]["executors"][executor]["container"]["command"])
        secret = {(s["secretName"], k["secretKey"], k["envVar"], s["optional"])
                  for s in spec.get("secretAsEnv", []) for k in s["keyToEnv"] if s["secretName"] == "entropy-ft-mlflow"}
        uri = {k["envVar"] for c in spec.get("configMapAsEnv", []) for k in c["keyToEnv"]} & {"MLFLOW_TRACKING_URI"}
        if _talks_to_mlflow(code):
            talking.add(stage)
            assert secret == {("entropy-ft-mlflow", v, v, True)
                              for v in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}, executor
            assert uri, executor
        else:
            assert not secret and not uri, f"{executor} gets MLflow credentials it does not use"
    assert "finetune" in talking and ("register" in talking) == (name == "training")
    assert ("evaluate-external" in talking) == (name == "training") and "evaluate" not in talking


@pytest.mark.parametrize("name", ["training", "ablation"])
def test_no_credential_or_local_path_in_yaml(compiled, name):
    text, _, _ = compiled[name]
    assert MARKER not in text
    for local in (str(Path.cwd()), str(Path.home()), "/tmp/", "/work/"):
        assert local not in text, local
    assert not re.search(r"(?i)(aws_secret_access_key|password)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", text)


def test_bad_cluster_flags_exit_2(tmp_path, capsys):
    assert main(["compile", "--out", str(tmp_path / "x.yaml"), "--toleration", "gpu"]) == 2
    assert "--toleration gpu" in capsys.readouterr().err
    assert main(["compile", "--out", str(tmp_path / "x.yaml"), "--node-selector", "novalue"]) == 2


@pytest.mark.parametrize("name", ["training", "ablation"])
def test_pipeline_parameters_are_the_flag_table(compiled, name):
    """Every knob in the parameter table is a pipeline parameter with the same default, and nothing else is."""
    from entropy_ft.pipelines.definitions import params_for

    _, spec, _ = compiled[name]
    declared = spec["root"]["inputDefinitions"]["parameters"]
    table = {p.name: p.pipeline_default for p in params_for(name)}
    assert set(declared) == set(table)
    for key, default in table.items():
        assert declared[key]["defaultValue"] == default, key


def test_finetune_checkpoints_outlive_the_pod(compiled, monkeypatch):
    """On a cluster finetune checkpoints under ENTROPY_FT_CHECKPOINT_ROOT, keyed by its output URI."""
    from entropy_ft.training.checkpoint import checkpoint_dir_for as checkpoint_dir

    _, _, platform = compiled["training"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    keys = {k["envVar"] for cm in k8s["configMapAsEnv"] for k in cm["keyToEnv"]}
    assert "ENTROPY_FT_CHECKPOINT_ROOT" in keys
    monkeypatch.delenv("ENTROPY_FT_CHECKPOINT_ROOT", raising=False)
    assert checkpoint_dir("s3://b/run-1/finetune/model") == "s3://b/run-1/finetune/model/checkpoint"  # local runs
    monkeypatch.setenv("ENTROPY_FT_CHECKPOINT_ROOT", "s3://b/checkpoints/")
    first = checkpoint_dir("s3://b/run-1/finetune/model")
    assert first.startswith("s3://b/checkpoints/") and first == checkpoint_dir("s3://b/run-1/finetune/model")
    assert first != checkpoint_dir("s3://b/run-1/for-loop-1-iteration-1/finetune/model")


def test_local_run_makes_local_paths_absolute(tmp_path, monkeypatch):
    from entropy_ft.errors import UserError
    from entropy_ft.pipelines.run import local_inputs as absolute_paths

    (tmp_path / "data.zip").write_bytes(b"")
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("path,label\n")
    monkeypatch.chdir(tmp_path)
    fixed = absolute_paths({"data": "data.zip, s3://b/x,synthetic:40", "weights": "w.pt", "arch": "resnet18",
                            "labels": "labels.csv"})
    assert fixed == {"data": f"{tmp_path}/data.zip,s3://b/x,synthetic:40", "weights": f"{tmp_path}/w.pt",
                     "arch": "resnet18", "labels": f"{tmp_path}/labels.csv"}
    assert absolute_paths({"weights": "imagenet"}) == {"weights": "imagenet"}
    assert absolute_paths({"labels": "", "extends": ""}) == {"labels": "", "extends": ""}
    assert absolute_paths({"labels": "s3://b/labels.csv"}) == {"labels": "s3://b/labels.csv"}
    (tmp_path / "other").mkdir()
    assert absolute_paths({"external_data": "other"}) == {"external_data": f"{tmp_path}/other"}
    assert absolute_paths({"external_data": ""}) == {"external_data": ""}
    assert absolute_paths({"external_data": "s3://b/ext.zip"}) == {"external_data": "s3://b/ext.zip"}
    with pytest.raises(UserError, match="--external-data elsewhere.zip: no such file or folder"):
        absolute_paths({"external_data": "elsewhere.zip"})
    with pytest.raises(UserError, match="--data missing.zip: no such file or folder"):
        absolute_paths({"data": "missing.zip"})
    with pytest.raises(UserError, match="--weights nope.pt"):
        absolute_paths({"weights": "nope.pt"})
    with pytest.raises(UserError, match="--labels gone.csv: no such file"):
        absolute_paths({"labels": "gone.csv"})
    (tmp_path / "export").mkdir()
    with pytest.raises(UserError, match="--labels export: no such file"):  # a folder is not a label file
        absolute_paths({"labels": "export"})


def test_run_with_a_missing_labels_file_exits_2_before_any_task(tmp_path, capsys):
    assert main(["run", "--root", str(tmp_path / "out"), "--labels", str(tmp_path / "labels.csv")]) == 2
    assert f"--labels {tmp_path / 'labels.csv'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_task_starts_with_pip_locally_or_on_a_cluster():
    """kfp.local runs every task in this environment and a cluster in the image, both of which hold kfp:
    no ``pip install kfp`` per task (on an air-gapped cluster it would fail before the step)."""
    from entropy_ft.pipelines.cluster import ClusterOptions
    from entropy_ft.pipelines.definitions import _components

    local, cluster = _components(None), _components(ClusterOptions())
    assert set(local) == {"ingest", "profile", "select", "finetune", "evaluate", "evaluate_external", "register",
                          "compare"}
    for name, component in local.items():
        assert "pip install" not in " ".join(component.component_spec.implementation.container.command), name
        assert "pip install" not in " ".join(cluster[name].component_spec.implementation.container.command), name


def test_local_ablation_runs_branches_one_at_a_time_and_the_cluster_in_parallel(compiled, tmp_path):
    """Locally the branches would share this machine's cores (each finetune uses all of them); on a
    cluster each pod has its own, so there they stay parallel."""
    from kfp import compiler

    from entropy_ft.pipelines.definitions import build

    compiler.Compiler().compile(build("ablation"), str(tmp_path / "local.yaml"))
    for spec, limit in ((yaml.safe_load(open(tmp_path / "local.yaml")), 1), (compiled["ablation"][1], None)):
        loop = next(t for t in _tasks(spec).values() if "parameterIterator" in t)
        assert loop.get("iteratorPolicy", {}).get("parallelismLimit") == limit


@pytest.mark.parametrize(("argv", "message"), [
    (["--arch", "squeezenet1_1", "--rule", "stage-budget:0.5"], "--rule stage-budget:0.5: squeezenet1_1 has no stages"),
    (["--rule", "budget:0"], "--rule 'budget:0': F must be in (0, 1]"),
    (["--rule", "deep"], "--rule 'deep': unknown rule"),
])
def test_run_with_a_rule_the_architecture_cannot_take_exits_2_before_any_task(argv, message, tmp_path, capsys):
    assert main(["run", "--root", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

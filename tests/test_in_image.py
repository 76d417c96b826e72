"""Compiled components run as a cluster runs them: their own command, no network, uid 10001, read-only root.

The whole training chain inside the built image is benchmarks/in_image.py: building the image takes
minutes this suite cannot spend (docs/deploy.md). Here the same launcher (tests/kfp_launcher.py) runs
the first three compiled training tasks from the compiled YAML, each in its own sandbox of this
machine's root filesystem (read-only, the pods' emptyDirs the only writable paths, uid 10001, a new
network namespace with no interface up), with the artifacts passed through a real S3 endpoint.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from kfp_launcher import STEP_LOG, Cluster, Image, Launcher, TaskFailed, config_map, load

from entropy_ft.cli import main
from entropy_ft.pipelines.cluster import default_image
from tests.lint_tools import require_tool

SETTINGS = Path(__file__).parents[1] / "manifests" / "base" / "settings.yaml"
NETWORK_TOOLS = re.compile(r"\b(pip3?|ensurepip|apt-get|apt|curl|wget|conda|uv|git)\b")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("compiled")
    paths = {}
    for pipeline in ("training", "ablation"):
        paths[pipeline] = out / f"{pipeline}.yaml"
        assert main(["compile", "--pipeline", pipeline, "--gpus", "0", "--out", str(paths[pipeline])]) == 0
    return paths


@pytest.mark.parametrize("pipeline", ["training", "ablation"])
def test_no_compiled_component_installs_anything_before_its_step(compiled, pipeline):
    """A component that ran `pip install kfp` first would reach the network before the step on every
    pod start, and fail on an air-gapped cluster; the command is the bare KFP executor."""
    spec, _ = load(compiled[pipeline])
    executors = spec["deploymentSpec"]["executors"]
    assert executors
    for name, executor in executors.items():
        command = executor["container"]["command"]
        # sh -ec SHIM PROGRAM: the shim writes the program to a file and runs KFP's executor on it
        assert len(command) == 4 and command[:2] == ["sh", "-ec"], (name, command[:3])
        assert "python3 -m kfp.dsl.executor_main" in command[2], name
        assert not NETWORK_TOOLS.findall(command[2]), (name, command[2])


@pytest.mark.parametrize("pipeline", ["training", "ablation"])
def test_every_pod_runs_as_the_image_user_writing_only_to_empty_dirs(compiled, pipeline):
    spec, platform = load(compiled[pipeline])
    for executor in spec["deploymentSpec"]["executors"]:
        config = platform[executor]
        assert config["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}
        mounts = {m["mountPath"] for m in config["emptyDirMounts"]}
        assert {"/tmp", "/home/entropy"} <= mounts, executor
        assert config["podMetadata"]["labels"]["entropy-ft.io/read-only-root"] == "true", executor
    dockerfile = (Path(__file__).parents[1] / "images" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and "WORKDIR /home/entropy" in dockerfile


@pytest.mark.parametrize("pipeline", ["training", "ablation"])
def test_every_config_map_key_a_pod_needs_is_in_the_shipped_config_map(compiled, pipeline):
    """A key a pod reads without `optional` that the ConfigMap lacks stops the kubelet from starting it."""
    _, platform = load(compiled[pipeline])
    shipped = config_map(SETTINGS)
    for executor, config in platform.items():
        for ref in config.get("configMapAsEnv", []):
            assert ref["configMapName"] == "entropy-ft-settings"
            missing = [pair["configMapKey"] for pair in ref["keyToEnv"] if pair["configMapKey"] not in shipped]
            assert ref.get("optional") or not missing, f"{executor} needs {missing}, absent from {SETTINGS.name}"


def _launcher(compiled: Path, s3_endpoint, work: Path, **kwargs) -> Launcher:
    require_tool("bwrap", "apt-get install bubblewrap; .ci/run does")
    s3_endpoint.make_bucket("pipeline")
    cluster = Cluster("s3://pipeline/root", s3_endpoint.client(),
                      secrets={"entropy-ft-s3": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}},
                      config_maps={"entropy-ft-settings": config_map(SETTINGS, AWS_ENDPOINT_URL=s3_endpoint.url,
                                                                     MLFLOW_TRACKING_URI="http://127.0.0.1:9")})
    host = Image.host(str(Path(sys.executable).parent) + ":/usr/bin:/bin")
    return Launcher(compiled, {default_image(): host}, cluster, work, **kwargs)


def test_the_sandbox_has_no_network_a_read_only_root_and_uid_10001(compiled, s3_endpoint, tmp_path):
    """The sandbox the chain below runs in, probed: were it leaky, that test would prove nothing."""
    import subprocess

    launcher = _launcher(compiled["training"], s3_endpoint, tmp_path, isolate_network=True)
    pod = tmp_path / "pod"
    probe = ("import os, socket, sys\n"
             "print(os.getuid(), os.getgid())\n"
             "for path in ('/usr/probe', '/probe', '/tmp/probe', '/home/entropy/probe', '/s3/probe'):\n"
             "    try:\n        open(path, 'w').close(); print(path, 'writable')\n"
             "    except OSError as exc:\n        print(path, exc.strerror)\n"
             "try:\n    socket.create_connection(('151.101.0.223', 443), timeout=3); print('network: reached')\n"
             "except OSError as exc:\n    print('network:', exc.strerror)\n"
             "print(sys.prefix)\n")
    argv = [*launcher.sandbox("exec-select", pod, launcher.environment("exec-select", {})), "python3", "-c", probe]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "10001 10001"
    assert lines[7] == sys.prefix  # the pod's PATH, not this process's environment, chose the interpreter
    assert lines[1:6] == ["/usr/probe Read-only file system", "/probe Read-only file system",
                          "/tmp/probe writable", "/home/entropy/probe writable", "/s3/probe writable"]
    assert lines[6] == "network: Network is unreachable"


def test_a_missing_config_map_key_fails_the_pod_as_the_kubelet_would(compiled, s3_endpoint, tmp_path):
    launcher = _launcher(compiled["training"], s3_endpoint, tmp_path, isolate_network=True)
    launcher.cluster.config_maps = {}
    with pytest.raises(TaskFailed, match="entropy-ft-settings/AWS_ENDPOINT_URL is missing"):
        launcher.environment("exec-ingest", {})


@pytest.mark.slow
def test_compiled_ingest_profile_select_run_sandboxed_from_their_own_commands(compiled, s3_endpoint, tmp_path):
    from entropy_ft.artifacts import DatasetManifest, Profile, Selection
    from entropy_ft.selection.rules import DEFAULT_RULE

    lines: list[str] = []
    launcher = _launcher(compiled["training"], s3_endpoint, tmp_path, isolate_network=True,
                         on_line=lambda task, line: lines.append(f"{task}: {line}"))
    runs = launcher.run({"data": "synthetic:96", "image_size": 32, "weights": "none", "profile_images": 32},
                        only={"ingest", "profile", "select"})
    assert [r.task for r in runs] == ["ingest", "profile", "select"]
    assert all(r.first_line_s(STEP_LOG) is not None and r.first_line_s(STEP_LOG) < r.seconds for r in runs)
    assert any("select" in line for line in lines)

    fetched = tmp_path / "fetched"
    for task, name in (("ingest", "dataset"), ("profile", "profile"), ("select", "selection")):
        launcher.download(launcher.outputs[task]["artifacts"][name]["artifacts"][0], fetched)
    uri = {task: launcher.outputs[task]["artifacts"][name]["artifacts"][0]["uri"].removeprefix("s3://")
           for task, name in (("ingest", "dataset"), ("profile", "profile"), ("select", "selection"))}
    manifest = DatasetManifest.read(str(fetched / uri["ingest"]))
    assert sum(manifest.totals.values()) == 96
    profile = Profile.read(str(fetched / uri["profile"]))
    selection = Selection.read(str(fetched / uri["select"]))
    assert selection.rule == DEFAULT_RULE and selection.layers
    assert set(selection.layers) <= {layer["name"] for layer in profile.layers}
    assert launcher.outputs["select"]["parameterValues"]["Output"] == selection.trainable_params
    assert launcher.outputs["ingest"]["artifacts"]["dataset"]["artifacts"][0]["metadata"]["totals"] == manifest.totals

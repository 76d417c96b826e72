"""Benchmark: the served model under concurrent requests, and bad requests beside good ones.

    .venv/bin/python benchmarks/serving_load.py [--clients 8] [--seconds 60] [--workers 2]

A resnet18 Model dir (the shared Imagenette weights, a new 4-class head, 128 px) is logged as the
registered pyfunc is, and served by ``mlflow models serve --env-manager local`` on 127.0.0.1.
Each of ``--clients`` threads sends one real Kaggle JPEG a request for ``--seconds`` s. Every
answer is compared with the same image's answer to a lone request made before the load: equal
class, and probabilities within 1e-6. Then bad requests, each followed by a good one:
a corrupt JPEG, a 10,000 x 10,000 PNG, a DICOM object with no pixels, an empty body.

Writes ``benchmarks/results/serving-load.{json,md}``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))
from mlflow_server import free_port, stop, wait_healthy  # noqa: E402  (the tests' server helpers)

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def kaggle_jpegs(archive: Path, per_class: int) -> list[bytes]:
    with zipfile.ZipFile(archive) as zf:
        names = sorted(zf.namelist())
        return [zf.read(n) for cls in CLASSES
                for n in [n for n in names if n.startswith(f"Testing/{cls}/") and n.endswith(".jpg")][:per_class]]


def model_uri(weights: Path, work: Path) -> str:
    """A resnet18 Model dir logged as `register` logs it, in a throwaway local store."""
    import mlflow

    from entropy_ft.data.loader import IMAGENET_MEAN, IMAGENET_STD
    from entropy_ft.model.factory import build_model
    from entropy_ft.model.model_dir import save_model_dir
    from entropy_ft.tracking import serving

    model, info = build_model("resnet18", len(CLASSES), str(weights))
    meta = {"arch": "resnet18", "classes": CLASSES, "weights": info.source, "weights_sha256": info.sha256,
            "preprocessing": {"image_size": 128, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "channels": 3, "mode": "L"},
            "selection": {"strategy": "full"}, "training": {}, "data_manifest_sha256": "0" * 64}
    save_model_dir(work / "model", model, meta)
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    with mlflow.start_run():
        return serving.log_pyfunc(work / "model", meta).model_uri


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def body(images: list[bytes]) -> bytes:
    data = [[base64.b64encode(b).decode()] for b in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": data}}).encode()


def bad_requests() -> dict[str, bytes]:
    from dicomfiles import without_pixels
    from PIL import Image

    huge = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(huge, format="PNG")
    return {"corrupt JPEG": body([b"\xff\xd8\xff\xe0 not really a jpeg"]),
            "10,000 x 10,000 PNG": body([huge.getvalue()]),
            "DICOM with no pixels": body([without_pixels()]), "empty body": b""}


def load(url: str, images: list[bytes], reference: list[dict], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    mismatches = errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        nonlocal mismatches, errors
        i = k
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            status, answer = post(url, body([images[i % len(images)]]))
            took = time.perf_counter() - started
            ok = status == 200
            same = ok and same_answer(answer["predictions"][0], reference[i % len(images)])
            with lock:
                latencies.append(took)
                errors += not ok
                mismatches += ok and not same
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(ms),
            "throughput_per_s": round(len(ms) / wall, 2), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(ms[-1], 1),
            "errors": errors, "answers_differing_from_a_lone_request": mismatches}


def same_answer(a: dict, b: dict) -> bool:
    return a["predicted_class"] == b["predicted_class"] and all(abs(a[c] - b[c]) <= 1e-6 for c in CLASSES)


def markdown(result: dict) -> str:
    r = result["load"]
    lines = ["# The served model under load", "", f"Command: `{result['command']}`", "",
             f"`mlflow models serve --env-manager local -w {result['workers']}` on 127.0.0.1, a resnet18 pyfunc at "
             f"128 px (as `register` logs it), on {result['machine']}; one real Kaggle JPEG a request.", "",
             "| clients | s | requests | per second | p50 ms | p99 ms | max ms | errors | answers unlike a lone "
             "request's |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {r['clients']} | {r['seconds']} | {r['requests']} | {r['throughput_per_s']} | {r['p50_ms']} | "
             f"{r['p99_ms']} | {r['max_ms']} | {r['errors']} | {r['answers_differing_from_a_lone_request']} |", "",
             "## Bad requests, each followed by a good one", "",
             "| request | status | the server said | next good request |", "|---|---:|---|---|"]
    for name, b in result["bad"].items():
        lines.append(f"| {name} | {b['status']} | {' '.join(b['message'].split())[:160]} | "
                     f"{'answered, same as before' if b['next_ok'] else 'NOT answered'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--workers", type=int, default=2, help="`mlflow models serve -w`")
    p.add_argument("--archive", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_KAGGLE_ZIP", SHARED / "data" / "brain-tumor-mri-kaggle.zip")))
    p.add_argument("--weights", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_WEIGHTS_DIR", SHARED / "weights")) / "resnet18-imagenette.pt")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving-load")
    args = p.parse_args()
    images = kaggle_jpegs(args.archive, 8)
    with tempfile.TemporaryDirectory(prefix="entropy-ft-serving-") as tmp:
        work = Path(tmp)
        uri = model_uri(args.weights, work)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = work / "serve.log"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_healthy(url, proc, log, 120)
            reference = [post(url, body([im]))[1]["predictions"][0] for im in images]
            print(f"serving {uri} at {url}; {len(images)} images; load for {args.seconds:g} s", flush=True)
            result = {"load": load(url, images, reference, args.clients, args.seconds), "bad": {}}
            for name, request in bad_requests().items():
                status, answer = post(url, request)
                good_status, good = post(url, body([images[0]]))
                result["bad"][name] = {"status": status, "message": str(answer.get("message", answer))[:400],
                                       "next_ok": good_status == 200
                                       and same_answer(good["predictions"][0], reference[0])}
        finally:
            stop(proc)
    result.update(command=shlex.join(["benchmarks/serving_load.py", *sys.argv[1:]]), workers=args.workers,
                  machine=f"{os.cpu_count()} CPU cores, no GPU")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

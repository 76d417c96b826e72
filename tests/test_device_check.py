"""The GPU benchmarks' path, proven where no GPU is: what benchmarks/device_check.sh runs on a bare
GPU machine (paper.py's grid and budget sweep, in one process) imports nothing that machine
lacks, resumes an interrupted grid, and reads the bf16 weights that device_stage.py writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from imagefiles import imagefolder, make_zip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# not on the GPU machine's image, and not needed there (ingestion's wheels travel: device_stage.py)
ABSENT_THERE = ("kfp", "mlflow", "boto3", "botocore", "captum", "pylibjpeg")
BLOCKED_RUN = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not on the GPU machine")
sys.meta_path.insert(0, Absent())
sys.argv = {argv!r}
sys.path.insert(0, {bench!r})
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def paper(tmp_path: Path, weights: Path, archive: Path) -> subprocess.CompletedProcess:
    argv = [str(ROOT / "benchmarks" / "paper.py"), "--archs", "squeezenet1_1", "--image-size", "32", "--epochs", "1",
            "--seeds", "1", "--strategies", "entropy,random", "--budgets", "0.5", "--profile-images", "32",
            "--in-process", "--archive", str(archive), "--weights-dir", str(weights), "--cache",
            str(tmp_path / "cache"), "--results", str(tmp_path / "results"), "--name", "grid"]
    code = BLOCKED_RUN.format(absent=ABSENT_THERE, argv=argv, bench=str(ROOT / "benchmarks"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "ENTROPY_FT_NO_PROGRESS": "1"})


@pytest.fixture(scope="module")
def staged_weights(weights_dir, tmp_path_factory) -> Path:
    from device_stage import bf16_weights

    out = tmp_path_factory.mktemp("stage") / "weights"
    bf16_weights(weights_dir / "squeezenet1_1-imagenette.pt", out / "squeezenet1_1-imagenette.safetensors")
    return out


def test_staged_bf16_weights_are_half_the_bytes_and_load_as_the_originals_rounded(staged_weights, weights_dir):
    from entropy_ft.model.factory import build_model

    staged = staged_weights / "squeezenet1_1-imagenette.safetensors"
    original = weights_dir / "squeezenet1_1-imagenette.pt"
    assert staged.stat().st_size < 0.55 * original.stat().st_size
    a, b = (dict(build_model("squeezenet1_1", 4, str(w))[0].named_parameters()) for w in (staged, original))
    backbone = [k for k in a if not k.startswith("classifier")]  # the new head is drawn, not loaded
    for name in backbone:
        assert a[name].dtype == torch.float32
        torch.testing.assert_close(a[name], b[name].to(torch.bfloat16).float())


def test_the_grid_runs_without_kfp_or_mlflow_and_a_second_call_completes_an_interrupted_one(
        tmp_path, staged_weights):
    archive = make_zip(tmp_path / "archive.zip", {
        **imagefolder(12, split="Training", fmt="JPEG"), **imagefolder(4, start=500, split="Testing", fmt="JPEG")})
    first = paper(tmp_path, staged_weights, archive)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "grid.json").read_text())
    assert (report["runs_done"], report["runs_planned"]) == (4, 4)
    assert [(r["strategy"], r["budget"]) for r in report["runs"]] == [
        ("entropy", None), ("random", None), ("entropy", 0.5), ("random", 0.5)]
    sweep = report["budget_sweep"][0]
    assert sweep["budget"] == 0.5 and sweep["random"]["trainable_params"][0] <= sweep["entropy"]["trainable_params"][0]
    assert "entropy_minus_random" in sweep
    assert "## Budget sweep" in (tmp_path / "results" / "grid.md").read_text()
    sweep_plot = tmp_path / "results" / "grid-squeezenet1_1-budget-sweep.png"
    assert sweep_plot.read_bytes().startswith(b"\x89PNG")
    assert f"![{sweep_plot.name}]({sweep_plot.name})" in (tmp_path / "results" / "grid.md").read_text()

    run_dir = next((tmp_path / "cache" / "paper-runs").iterdir())
    (run_dir / "result-random-b0.5-s0.json").unlink()  # as if the grid was killed during its last run
    second = paper(tmp_path, staged_weights, archive)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("fine-tuning up to") == 1 and "random-b0.5-s0: fine-tuning" in second.stderr
    assert json.loads((tmp_path / "results" / "grid.json").read_text())["runs_done"] == 4


def test_presets_train_as_their_users_would_and_a_departing_noise_gets_its_own_results():
    """--cpu trains with the library's default noise (what entropy-ft run does), --paper with none (the paper's
    recipe); naming another noise than the preset's writes beside its table, never over it."""
    import paper as bench

    from entropy_ft.training.loop import TrainConfig

    cpu, gpu = bench.parse_args(["--cpu"]), bench.parse_args(["--paper"])
    assert (cpu.train_noise, cpu.train_noise_p, cpu.name) == (TrainConfig.train_noise, TrainConfig.train_noise_p,
                                                              "paper-cpu")
    assert (gpu.train_noise, gpu.name) == (0.0, "paper-gpu")
    assert bench.parse_args(["--cpu", "--train-noise", "0"]).name == "paper-cpu-no-train-noise"
    assert bench.parse_args(["--paper", "--train-noise", "0.3"]).name == "paper-gpu-train-noise"
    assert bench.parse_args(["--cpu", "--train-noise", "0.2"]).name == "paper-cpu"
    assert bench.settings(cpu)["train_noise"] == {"sigma_max": TrainConfig.train_noise, "p": TrainConfig.train_noise_p}

"""What each step costs, as ratios of two things measured in the same run on the same inputs.

    .venv/bin/python benchmarks/perf.py [--archive PATH] [--weights-dir DIR] [--repeats 3] [--only NAME,...]
        [--threads N]

Figures (medians over ``--repeats``, the two sides of a ratio measured alternately):

1. ``ingest``: the whole shared Kaggle archive into Parquet at 224 px, images per second.
2. ``loader``: the Parquet training loader against torchvision ``ImageFolder`` over the same
   training JPEGs, images per second, with and without the training augmentation (goal >= 2x);
   the measurement itself is ``benchmarks/ingest_loader.py``'s ``compare``.
3. ``profile``: entropy profiling (``entropy.profile_entropy``) over a set of images against one
   plain inference pass over the same images (goal <= 1.25).
4. ``epoch``: training steps of the entropy (below-mean) selection against full fine-tuning
   over the same batches, next to the ratio of backward FLOPs counted from the layer shapes,
   and the same for memory (saved activations + gradients + AdamW state, measured on the
   autograd graph, and the peak RSS of a fresh process per strategy).
5. ``precision``: full fine-tuning steps with bf16 autocast and channels_last against fp32 in
   the default (NCHW) layout.
6. ``pipeline``: ``entropy-ft run`` through kfp.local against the same library steps called
   directly in one process, on the same small synthetic data (goal <= 1.15).
7. ``ablation``: ``entropy-ft run --pipeline ablation`` through kfp.local on the real archive
   (64 px, 2 epochs, the four strategies) against the sum of the same steps run alone, one after
   another, each in a fresh process as a task runs it (goal <= 1.15): branches that fight over the
   cores show here.
8. ``floor``: the product's fine-tuning images/s (``training.loop.train``, one whole epoch as its
   history times it: batches read, augmented, trained, bookkept) against a bare loop over
   synthetic tensors already on the device (same arch, size, batch, precision and trainable
   layers, no data pipeline), for each ``--data-path`` (goal >= 0.85 for the one ``auto`` takes).
   Runs on the GPU when there is one.
9. ``compile``: whole fine-tuning runs of the product (``--compile-epochs`` epochs, full fine-tuning, the
   floor's synthetic data) with ``--compile MODE`` for each of ``--compile-modes`` against eager, each
   run in a fresh process with an empty inductor cache, so the compile time is paid as a user's first
   run pays it. Reports the whole run, the steady epoch after compiling, and from how many training
   images on the compile time is won back (a default only where a whole run is faster).

Writes ``<results>/perf.md`` and ``perf.json``; with ``--only``, the figures not run keep their
results from the earlier file, each labelled with the run that measured it. Not a test: run it on
an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # ingest_loader.py, stand_in_weights.py beside this file
import fresh_process  # noqa: E402
import provenance  # noqa: E402
import stand_in_weights  # noqa: E402

DEFAULT_ARCHIVE = Path(os.environ.get("ENTROPY_FT_KAGGLE_ZIP",
                                      ROOT.parent / "shared" / "data" / "brain-tumor-mri-kaggle.zip"))
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("ENTROPY_FT_WEIGHTS_DIR", ROOT.parent / "shared" / "weights"))
FIGURES = ("ingest", "loader", "profile", "epoch", "precision", "pipeline", "ablation", "floor", "compile")
GOALS = {"loader_eval": (">=", 2.0), "loader_train": (">=", 2.0), "profile": ("<=", 1.25), "pipeline": ("<=", 1.15),
         "ablation": ("<=", 1.15), "floor": (">=", 0.85)}
ABLATION_STRATEGIES = ("entropy", "full", "head", "random")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} perf: {message}", file=sys.stderr, flush=True)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(_timed(fn) for _ in range(repeats))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in alternation so that drifting background load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- 1-2: ingest and loader


def ingest_and_loader(args, tmp: Path, figures: set[str]) -> tuple[dict, Path]:
    """Ingest the archive (timed ``--repeats`` times when asked) and compare the loaders over it."""
    import ingest_loader

    from entropy_ft.steps import ingest

    out: dict = {}
    dataset = tmp / "kaggle-224"
    runs = []
    for i in range(args.repeats if "ingest" in figures else 1):
        target = tmp / f"ingest-{i}"
        seconds = _timed(lambda: ingest.run(
            ingest.Config(sources=(str(args.archive),), out=str(target), image_size=224)))
        runs.append(seconds)
        if i == 0:
            target.rename(dataset)
        else:
            subprocess.run(["rm", "-rf", str(target)], check=True)
    from entropy_ft.data.format import load_manifest

    manifest = load_manifest(dataset)
    files = sum(s["files"] for s in manifest.sources)
    if "ingest" in figures:
        seconds = statistics.median(runs)
        out["ingest"] = {"archive": args.archive.name, "files": files, "images": sum(manifest.totals.values()),
                         "image_size": 224, "seconds": seconds, "runs_seconds": runs,
                         "files_per_second": files / seconds}
        log(f"ingest: {files} files in {seconds:.1f} s ({files / seconds:.0f} files/s)")
    if "loader" in figures:
        jpegs = tmp / "jpeg"
        n = ingest_loader.extract_training_jpegs(args.archive, jpegs)
        opts = argparse.Namespace(batch_size=64, workers=args.workers, batches=args.loader_batches, rounds=args.repeats)
        out["loader"] = {"jpeg_files": n, "batch_size": 64, "workers": args.workers,
                         "timed_batches": args.loader_batches,
                         "eval": ingest_loader.compare(dataset, jpegs, opts, train=False),
                         "train": ingest_loader.compare(dataset, jpegs, opts, train=True)}
        log(f"loader: {json.dumps(out['loader'])}")
    return out, dataset


# ---------------------------------------------------------------- 3: profiling against inference


def sample_images(dataset: Path, n: int, image_size: int):
    import torch

    from entropy_ft.data.loader import ParquetImages
    from entropy_ft.data.sample import stratified_indices

    ds = ParquetImages(dataset, "train", image_size=image_size)
    idx = stratified_indices(ds.labels, n, 0)
    return torch.stack([ds.pixels(int(i)) for i in idx]), torch.as_tensor(ds.labels[idx])


def profile_cost(args, dataset: Path) -> dict:
    import torch

    from entropy_ft.data.sample import ModelInputs
    from entropy_ft.model.factory import build_model
    from entropy_ft.selection.entropy import profile_entropy, tap_points

    images, _ = sample_images(dataset, args.profile_images, args.image_size)
    model, _ = build_model(args.arch, 4, args.weights)
    model = model.to(memory_format=torch.channels_last).eval()
    batches = ModelInputs(images, 32)
    taps = tap_points(model, args.arch, "conv")

    def plain() -> None:
        with torch.inference_mode():
            for x in batches:
                model(x)

    def profile() -> None:
        profile_entropy(model, taps, batches, 256, "histogram")

    plain()  # warm-up: oneDNN kernel choice, allocator
    forwards = []  # counted, not assumed: one entry per model call of one profile
    counter = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    profile()
    counter.remove()
    times = alternate({"plain": plain, "profile": profile}, args.repeats)
    result = {"arch": args.arch, "images": len(images), "image_size": args.image_size, "batch_size": 32,
              "plain_seconds": times["plain"], "profile_seconds": times["profile"],
              "ratio": times["profile"] / times["plain"], "forward_passes_per_profile": len(forwards) / len(batches)}
    log(f"profile: {json.dumps(result)}")
    return result


# ---------------------------------------------------------------- 4-5: training steps


def conv_flops(model, image_size: int) -> list[tuple[str, float]]:
    """(module name, forward FLOPs of one image) for every conv and linear layer, in execution order."""
    import torch
    from torch import nn

    flops: list[tuple[str, float]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, _inputs, output) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        flops.append((names[module], 2.0 * per_output * output[0].numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
    return flops


def analytic_flops(flops: list[tuple[str, float]], trainable: set[str]) -> dict:
    """Backward FLOPs of a selection: a layer's weight gradient costs its forward FLOPs when it trains;
    its input gradient costs them again when any layer before it trains (the gradient must pass
    through it). Forward always runs in full. BatchNorm, ReLU and pooling are ignored (under 2%)."""
    backward, upstream = 0.0, False
    for name, f in flops:
        backward += f * (name in trainable) + f * upstream
        upstream = upstream or name in trainable
    forward = sum(f for _, f in flops)
    return {"forward": forward, "backward": backward, "step": forward + backward}


def selection_layers(args, dataset: Path) -> dict[str, list[str]]:
    """Conv layers per strategy: entropy (below-mean, profiled like ``entropy-ft profile``), full, head."""
    import torch

    from entropy_ft.data.sample import ModelInputs
    from entropy_ft.model.factory import build_model, measure_backbone
    from entropy_ft.selection.entropy import profile_entropy, tap_points
    from entropy_ft.selection.rules import parse_rule, select_by_entropy, strategy_layers

    images, _ = sample_images(dataset, args.profile_images, args.image_size)
    model, _ = build_model(args.arch, 4, args.weights)
    model = model.to(memory_format=torch.channels_last)
    rows = profile_entropy(model, tap_points(model, args.arch, "conv"), ModelInputs(images, 32))
    costs = measure_backbone(model, args.arch).costs
    return {"entropy": select_by_entropy({r.name: r.entropy for r in rows}, costs, parse_rule("below-mean")),
            "full": strategy_layers("full", list(costs)), "head": strategy_layers("head", list(costs))}


def train_steps(spec: dict) -> dict:
    """Time ``spec['steps']`` optimizer steps over fixed batches (median of repeats), and measure memory."""
    import torch
    from torch import nn

    from entropy_ft.data.loader import ParquetImages, to_model_input
    from entropy_ft.device import autocast
    from entropy_ft.model.factory import build_model, trainable_module_names
    from entropy_ft.model.freezing import apply_selection, split_frozen_prefix

    torch.manual_seed(0)
    ds = ParquetImages(spec["dataset"], "train", image_size=spec["image_size"])
    n = spec["steps"] * spec["batch_size"]
    images = torch.stack([ds.pixels(i) for i in range(n)])
    labels = torch.as_tensor(ds.labels[:n])
    del ds  # the whole split's pixel buffer would dominate the process's memory
    model, _ = build_model(spec["arch"], 4, spec["weights"])
    model = model.to(memory_format=torch.channels_last if spec["channels_last"] else torch.contiguous_format)
    modules = trainable_module_names(model, spec["arch"], spec["layers"])
    params = apply_selection(model, modules)
    staged = split_frozen_prefix(model, spec["arch"]).train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    saved_bytes = [0]
    weights = {p.data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:  # a parameter saved by reference costs no memory
            saved_bytes[0] += t.numel() * t.element_size()
        return t

    def step(i: int, measure: bool = False) -> None:
        sl = slice(i * spec["batch_size"], (i + 1) * spec["batch_size"])
        x = to_model_input(images[sl], device, channels_last=spec["channels_last"])
        ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else contextlib.nullcontext()
        with ctx, autocast(device, spec["precision"]):
            logits = staged(x)
        loss = criterion(logits.float(), labels[sl])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    gc.collect()
    before = rss_mb()
    with RssPeak() as peak:
        step(0, measure=True)  # warm-up, and the autograd graph's saved tensors of one step
        epoch = lambda: [step(i) for i in range(spec["steps"])]  # noqa: E731
        seconds = [_timed(epoch) for _ in range(spec["repeats"])]
    trainable = sum(p.numel() for p in params)
    return {"seconds": statistics.median(seconds), "runs_seconds": seconds, "trainable_params": trainable,
            "saved_activation_mb": saved_bytes[0] / 2**20,
            # fp32 gradient + AdamW exp_avg and exp_avg_sq per trainable parameter
            "grad_and_optimizer_mb": trainable * 4 * 3 / 2**20,
            "rss_before_mb": before, "peak_rss_mb": peak.mb, "peak_rss_growth_mb": peak.mb - before}


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """Highest RSS seen while the block runs, sampled every 5 ms from a thread (torch releases the GIL)."""

    def __enter__(self) -> RssPeak:
        self.mb, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.mb = max(self.mb, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, rss_mb())


def in_fresh_process(fn: Callable[[dict], dict], spec: dict) -> dict:
    """Run ``fn(spec)`` in a new interpreter, so no allocation of an earlier measurement lingers. A plain
    (non-daemonic) process, so that ``fn`` may start its own workers (ingestion's decode pool)."""
    with tempfile.TemporaryDirectory(prefix="entropy-ft-perf-result-") as tmp:
        out = Path(tmp) / "result.json"
        exitcode = fresh_process.run(_write_result, fn, spec, str(out))
        if exitcode != 0:
            raise SystemExit(f"{fn.__name__} failed in its own process (exit {exitcode})")
        return json.loads(out.read_text())


def _write_result(fn: Callable[[dict], dict], spec: dict, out: str) -> None:
    Path(out).write_text(json.dumps(fn(spec)))


def training_memory(run: dict) -> float:
    """MB that training needs beyond inference: activations kept for backward, gradients, optimizer state."""
    return run["saved_activation_mb"] + run["grad_and_optimizer_mb"]


def epoch_cost(args, dataset: Path) -> dict:
    import torch

    from entropy_ft.device import resolve_precision
    from entropy_ft.model.factory import build_model, trainable_module_names

    layers = selection_layers(args, dataset)
    precision = resolve_precision("auto", torch.device("cpu"))
    base = {"dataset": str(dataset), "image_size": args.image_size, "arch": args.arch, "weights": args.weights,
            "batch_size": 32, "steps": args.train_steps, "repeats": args.repeats, "channels_last": True,
            "precision": precision}
    model, _ = build_model(args.arch, 4, args.weights)
    flops = conv_flops(model, args.image_size)
    runs, analytic = {}, {}
    for strategy in ("full", "entropy", "head"):
        log(f"epoch: {strategy} ({len(layers[strategy])} conv layers)")
        runs[strategy] = in_fresh_process(train_steps, {**base, "layers": layers[strategy]})
        analytic[strategy] = analytic_flops(flops, set(trainable_module_names(model, args.arch, layers[strategy])))

    result = {"arch": args.arch, "image_size": args.image_size, "batch_size": 32, "steps": args.train_steps,
              "precision": precision, "layers": {k: len(v) for k, v in layers.items()}, "runs": runs,
              "flops_per_image": analytic, "ratios": {}}
    for strategy in ("entropy", "head"):
        r, f = runs[strategy], runs["full"]
        result["ratios"][strategy] = {
            "time": r["seconds"] / f["seconds"],
            "backward_flops": analytic[strategy]["backward"] / analytic["full"]["backward"],
            "step_flops": analytic[strategy]["step"] / analytic["full"]["step"],
            "training_memory": training_memory(r) / training_memory(f),
            "peak_rss_growth": r["peak_rss_growth_mb"] / f["peak_rss_growth_mb"],
            "trainable_params": r["trainable_params"] / f["trainable_params"],
        }
    log(f"epoch: {json.dumps(result['ratios'])}")
    return result


def precision_cost(args, dataset: Path) -> dict:
    from entropy_ft.device import cpu_has_native_bf16
    from entropy_ft.model.factory import build_model, conv_layers

    base = {"dataset": str(dataset), "image_size": args.image_size, "arch": args.arch, "weights": args.weights,
            "batch_size": 32, "steps": args.train_steps, "repeats": args.repeats, "layers": None}
    base["layers"] = conv_layers(build_model(args.arch, 4, "none")[0], args.arch)  # full fine-tuning
    fp32 = in_fresh_process(train_steps, {**base, "channels_last": False, "precision": "fp32"})
    bf16 = in_fresh_process(train_steps, {**base, "channels_last": True, "precision": "bf16"})
    result = {"arch": args.arch, "image_size": args.image_size, "strategy": "full",
              "native_bf16": cpu_has_native_bf16(),
              "fp32_nchw_seconds": fp32["seconds"], "bf16_channels_last_seconds": bf16["seconds"],
              "speedup": fp32["seconds"] / bf16["seconds"],
              "peak_rss_growth_ratio": bf16["peak_rss_growth_mb"] / fp32["peak_rss_growth_mb"]}
    log(f"precision: {json.dumps(result)}")
    return result


# ---------------------------------------------------------------- 6: orchestration overhead


def direct_pipeline(spec: dict) -> dict:
    """The training pipeline's steps called in this process, as the KFP components call them."""
    os.environ["ENTROPY_FT_HOME"] = spec["root"]
    os.environ["ENTROPY_FT_NO_PROGRESS"] = "1"
    from entropy_ft.steps import evaluate, finetune, ingest, profile, register, select
    from entropy_ft.tracking import runs as tracking

    root, a = Path(spec["root"]), spec["arguments"]
    started = time.perf_counter()
    ingest.run(ingest.Config(sources=(a["data"],), out=str(root / "dataset"), image_size=a["image_size"],
                             seed=a["seed"]))
    profile.run(profile.Config(dataset=str(root / "dataset"), arch=a["arch"], weights=a["weights"],
                               out=str(root / "profile"), images=a["profile_images"], seed=a["seed"]))
    select.run(select.Config(profile=str(root / "profile"), strategy=a["strategy"], out=str(root / "selection"),
                             rule=a["rule"], seed=a["seed"]))
    run_id = tracking.ensure_run(None, "perf-direct", tracking.pipeline_tags(None, None, "direct"))
    finetune.run(finetune.Config(dataset=str(root / "dataset"), selection=str(root / "selection" / "selection.json"),
                                 out=str(root / "model"), epochs=a["epochs"], batch_size=a["batch_size"],
                                 seed=a["seed"]),
                 on_epoch_end=tracking.epoch_logger(run_id))
    evaluate.run(evaluate.Config(model=str(root / "model"), dataset=str(root / "dataset"), out=str(root / "eval"),
                                 seed=a["seed"]))
    register.run(register.Config(model=str(root / "model"), eval=str(root / "eval" / "eval.json"),
                                 model_name=a["model_name"], run_id=run_id,
                                 profile=str(root / "profile" / "profile.json"),
                                 selection=str(root / "selection" / "selection.json")))
    return {"seconds": time.perf_counter() - started}


def pipeline_cost(args, tmp: Path) -> dict:
    arguments = {"data": f"synthetic:{args.pipeline_images}", "image_size": 64, "arch": args.arch,
                 "weights": args.weights,
                 "profile_images": 128, "strategy": "entropy", "rule": "below-mean", "seed": 0,
                 "epochs": args.pipeline_epochs, "batch_size": 32, "model_name": "perf"}
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ENTROPY_FT_HOME")}
    env["ENTROPY_FT_NO_PROGRESS"] = "1"
    cli = [sys.executable, "-m", "entropy_ft.cli", "run", "--root"]
    flags = ["--data", arguments["data"], "--image-size", "64", "--arch", args.arch, "--weights", args.weights,
             "--profile-images", "128", "--strategy", "entropy", "--rule", "below-mean", "--seed", "0",
             "--epochs", str(args.pipeline_epochs), "--batch-size", "32", "--model-name", "perf"]
    kfp_times, direct_times, tasks = [], [], 0
    for i in range(args.repeats):
        root = tmp / f"kfp-{i}"
        started = time.perf_counter()
        proc = subprocess.run([*cli, str(root), *flags], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"entropy-ft run failed:\n{proc.stderr[-3000:]}")
        kfp_times.append(time.perf_counter() - started)
        tasks = sum(p.is_dir() for p in Path(json.loads(proc.stdout)["run_dir"]).iterdir())  # one process each
        started = time.perf_counter()
        in_fresh_process(direct_pipeline, {"root": str(tmp / f"direct-{i}"), "arguments": arguments})
        direct_times.append(time.perf_counter() - started)
        log(f"pipeline round {i + 1}: kfp.local {kfp_times[-1]:.1f} s, direct {direct_times[-1]:.1f} s")
    kfp, direct = statistics.median(kfp_times), statistics.median(direct_times)
    # The overhead is fixed per task (a process that imports its libraries again), so it sets how
    # much work a run needs before kfp.local stays within the goal: direct >= overhead / (goal - 1).
    overhead, goal = kfp - direct, GOALS["pipeline"][1]
    return {"arguments": arguments, "command": shlex.join(["entropy-ft", "run", "--root", "ROOT", *flags]),
            "kfp_local_seconds": kfp, "direct_seconds": direct, "ratio": kfp / direct,
            "kfp_runs": kfp_times, "direct_runs": direct_times, "overhead_seconds": overhead, "tasks": tasks,
            "overhead_per_task_seconds": overhead / tasks, "direct_seconds_for_goal": overhead / (goal - 1)}


def ablation_step(spec: dict) -> dict:
    """One step of the ablation pipeline, called as its component calls it; only that step's module is
    imported, as in a task's process."""
    import importlib

    os.environ["ENTROPY_FT_HOME"] = spec["root"]
    os.environ["ENTROPY_FT_NO_PROGRESS"] = "1"
    step = importlib.import_module(f"entropy_ft.steps.{spec['step']}")
    root, a, strategy = Path(spec["root"]), spec["arguments"], spec.get("strategy")
    data = str(root / "dataset")
    sel, model, ev = (str(root / f"{name}-{strategy}") for name in ("selection", "model", "eval"))
    config = {
        "ingest": lambda: {"sources": (a["data"],), "out": data, "image_size": a["image_size"], "seed": a["seed"]},
        "profile": lambda: {"dataset": data, "arch": a["arch"], "weights": a["weights"], "out": str(root / "profile"),
                            "images": a["profile_images"], "seed": a["seed"]},
        "select": lambda: {"profile": str(root / "profile"), "strategy": strategy, "out": sel, "seed": a["seed"]},
        "finetune": lambda: {"dataset": data, "selection": str(Path(sel) / "selection.json"), "out": model,
                             "epochs": a["epochs"], "seed": a["seed"]},
        "evaluate": lambda: {"model": model, "dataset": data, "out": ev, "seed": a["seed"]},
        "compare": lambda: {"evaluations": tuple(str(root / f"eval-{s}") for s in a["strategies"]),
                            "out": str(root / "compare")},
    }[spec["step"]]()
    step.run(step.Config(**config))
    return {}


def ablation_cost(args, tmp: Path) -> dict:
    """The local ablation's wall time against its steps run alone, one after another: kfp.local
    runs the branches one at a time (ParallelFor parallelism 1), so only its fixed per-task cost
    should separate the two."""
    arguments = {"data": str(args.archive), "image_size": 64, "arch": args.arch, "weights": args.weights,
                 "profile_images": 128, "strategies": list(ABLATION_STRATEGIES), "seed": 0, "epochs": 2}
    flags = ["--pipeline", "ablation", "--data", arguments["data"], "--image-size", "64", "--arch", args.arch,
             "--weights", args.weights, "--profile-images", "128", "--strategies", ",".join(ABLATION_STRATEGIES),
             "--seed", "0", "--epochs", "2", "--no-cache"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ENTROPY_FT_HOME")}
    env["ENTROPY_FT_NO_PROGRESS"] = "1"
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "entropy_ft.cli", "run", "--root", str(tmp / "ablation-kfp"),
                           *flags], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"entropy-ft run --pipeline ablation failed:\n{proc.stderr[-3000:]}")
    kfp = time.perf_counter() - started
    log(f"ablation: kfp.local {kfp:.1f} s; now its steps alone")
    # each step alone in its own fresh process, as a task or an `entropy-ft <step>` command runs it
    seconds: dict[str, float] = {}
    branches = [(step, s) for s in ABLATION_STRATEGIES for step in ("select", "finetune", "evaluate")]
    for step, strategy in [("ingest", None), ("profile", None), *branches, ("compare", None)]:
        started = time.perf_counter()
        in_fresh_process(ablation_step, {"root": str(tmp / "ablation-direct"), "arguments": arguments, "step": step,
                                         "strategy": strategy})
        seconds[step + (f" {strategy}" if strategy else "")] = time.perf_counter() - started
    alone = sum(seconds.values())
    log(f"ablation: steps alone {alone:.1f} s ({json.dumps({k: round(v, 1) for k, v in seconds.items()})})")
    return {"arguments": arguments, "command": shlex.join(["entropy-ft", "run", "--root", "ROOT", *flags]),
            "kfp_local_seconds": kfp, "steps_alone_seconds": alone, "ratio": kfp / alone,
            "overhead_per_task_seconds": (kfp - alone) / len(seconds),
            "steps": seconds, "load_before": load_before, "load_after": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------- 7: the bare-loop floor


def floor_cost(args, tmp: Path) -> dict:
    """Seconds of one training epoch: the product's per data path, and the bare loop's, alternately."""
    import dataclasses

    import torch

    from entropy_ft.data.loader import ParquetImages
    from entropy_ft.data.on_device import resolve_data_path
    from entropy_ft.device import resolve_device, resolve_precision
    from entropy_ft.model.factory import build_model, conv_layers, trainable_module_names
    from entropy_ft.training.loop import TrainConfig, train

    data = floor_data(args, tmp)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0, device=str(device), precision=precision)
    blank = build_model(args.arch, 4, "none")[0]
    modules = trainable_module_names(blank, args.arch, conv_layers(blank, args.arch))  # full fine-tuning

    def fresh():
        torch.manual_seed(0)
        return build_model(args.arch, 4, args.weights)[0]

    wall: dict[str, list[float]] = {"device": [], "loader": []}

    def product(path: str) -> float:
        result = train(fresh(), args.arch, modules, data, dataclasses.replace(cfg, data_path=path))
        wall[path].append(result.seconds)
        return result.history[0]["seconds"]

    images = len(ParquetImages(data, "train"))
    load_before = os.getloadavg()[0]
    sides = {"bare": lambda: bare_epoch(fresh(), args.arch, modules, images, args.floor_size, cfg, device, precision),
             "device": lambda: product("device"), "loader": lambda: product("loader")}
    for fn in sides.values():
        fn()  # warm-up: kernel choice, allocator, page cache
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            seconds[name].append(fn())
    rate = {name: images / statistics.median(s) for name, s in seconds.items()}
    result = {"arch": args.arch, "image_size": args.floor_size, "batch_size": cfg.batch_size, "strategy": "full",
              "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "precision": precision, "train_images": images, "auto_data_path": resolve_data_path("auto", device),
              "images_per_second": rate, "runs_seconds": seconds,
              # train() from call to return: reading and placing the data, the epoch, validation
              "train_call_seconds": {path: statistics.median(w[1:]) for path, w in wall.items()},
              "ratio": {path: rate[path] / rate["bare"] for path in ("device", "loader")},
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    log(f"floor: {json.dumps({k: v for k, v in result.items() if k != 'runs_seconds'})}")
    return result


def floor_data(args, tmp: Path) -> Path:
    """The synthetic Dataset of the floor and compile figures (``--floor-images`` at ``--floor-size``), ingested
    once per perf.py run."""
    from entropy_ft.steps import ingest

    data = tmp / "floor-data"
    if not data.exists():
        ingest.run(ingest.Config(sources=(f"synthetic:{args.floor_images}",), out=str(data),
                                 image_size=args.floor_size, seed=0))
    return data


def compile_run(spec: dict) -> dict:
    """One whole fine-tuning run of the product (full fine-tuning) in this fresh process; per epoch seconds."""
    import torch

    from entropy_ft.model.factory import build_model, conv_layers, trainable_module_names
    from entropy_ft.training.loop import TrainConfig, train

    torch.manual_seed(0)
    model = build_model(spec["arch"], 4, spec["weights"])[0]
    modules = trainable_module_names(model, spec["arch"], conv_layers(model, spec["arch"]))
    started = time.perf_counter()
    result = train(model, spec["arch"], modules, spec["data"], TrainConfig(**spec["config"]))
    return {"epoch_seconds": [h["seconds"] for h in result.history],
            "train_call_seconds": time.perf_counter() - started, "device": result.device, "precision": result.precision}


def compile_cost(args, tmp: Path) -> dict:
    """Eager against each ``--compile-modes`` mode over whole runs, alternately, each run cold (fresh process,
    empty inductor cache): the first epoch carries the compile time, the later ones show the steady gain."""
    from entropy_ft.data.loader import ParquetImages

    data = floor_data(args, tmp)
    images = len(ParquetImages(data, "train"))
    config = {"epochs": args.compile_epochs, "patience": args.compile_epochs, "batch_size": 32, "seed": 0}
    modes = ["off", *args.compile_modes]
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode in modes:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / f"inductor-{mode}-{repeat}")  # cold, as a first run
            run = in_fresh_process(compile_run, {"arch": args.arch, "weights": args.weights, "data": str(data),
                                                 "config": {**config, "compile": mode}})
            log(f"compile {mode}: epochs {', '.join(f'{t:.1f}' for t in run['epoch_seconds'])} s")
            runs[mode].append(run)
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)

    def summary(mode: str) -> dict:
        first = statistics.median(r["epoch_seconds"][0] for r in runs[mode])
        steady = statistics.median(t for r in runs[mode] for t in r["epoch_seconds"][1:])
        return {"first_epoch_seconds": first, "steady_epoch_seconds": steady,
                "run_seconds": statistics.median(sum(r["epoch_seconds"]) for r in runs[mode])}

    eager = summary("off")
    result = {"arch": args.arch, "image_size": args.floor_size, "train_images": images, "strategy": "full",
              "epochs": args.compile_epochs, "device": runs["off"][0]["device"],
              "precision": runs["off"][0]["precision"], "eager": eager, "modes": {}, "runs": runs}
    for mode in args.compile_modes:
        x = summary(mode)
        # compile time: what the first epoch costs beyond a steady one, net of eager's own first-epoch extra
        overhead = (x["first_epoch_seconds"] - x["steady_epoch_seconds"]) - (
            eager["first_epoch_seconds"] - eager["steady_epoch_seconds"])
        gain = (eager["steady_epoch_seconds"] - x["steady_epoch_seconds"]) / images  # seconds per image
        result["modes"][mode] = {**x, "run_ratio": x["run_seconds"] / eager["run_seconds"],
                                 "steady_ratio": x["steady_epoch_seconds"] / eager["steady_epoch_seconds"],
                                 "compile_seconds": overhead,
                                 "pays_after_images": overhead / gain if gain > 0 else None}
    log(f"compile: {json.dumps({k: v for k, v in result.items() if k != 'runs'})}")
    return result


def bare_epoch(model, arch: str, modules: list[str], images: int, size: int, cfg, device, precision: str) -> float:
    """Seconds of one epoch of ``images`` synthetic images made on the device beforehand: the loop's step
    (``train_step``: autocast, loss, loss scaling, optimizer), frozen prefix and channels_last, nothing else."""
    import torch
    from torch import nn

    from entropy_ft.device import grad_scaler
    from entropy_ft.model.freezing import apply_selection, split_frozen_prefix
    from entropy_ft.training.loop import train_step

    model.to(device, memory_format=torch.channels_last)
    params = apply_selection(model, modules)
    staged = split_frozen_prefix(model, arch).train()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = grad_scaler(device, precision)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    g = torch.Generator().manual_seed(0)
    sizes = [min(cfg.batch_size, images - k) for k in range(0, images, cfg.batch_size)]
    xs = [torch.randn(b, 3, size, size, generator=g).to(device, memory_format=torch.channels_last) for b in sizes]
    ys = [torch.randint(0, 4, (b,), generator=g).to(device) for b in sizes]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        loss, _ = train_step(staged, x, y, optimizer, scaler, criterion, device, precision)
    loss.item()  # waits for the device, as the product's epoch does when it reads its running sums
    return time.perf_counter() - start


# ---------------------------------------------------------------- report


def verdict(value: float, goal: tuple[str, float]) -> str:
    op, target = goal
    ok = value <= target if op == "<=" else value >= target
    return f"{'meets' if ok else 'misses'} goal {op} {target:g}"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(meta: dict, r: dict) -> str:
    m = meta["machine"]
    lines = ["# Performance: what each step costs, as ratios measured side by side", "",
             "Generated by `benchmarks/perf.py`; do not edit by hand.", "",
             f"- Command: `{meta['command']}`",
             f"- Date: {meta['started']} to {meta['finished']}",
             f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m.get('gpu') or 'no GPU'}; "
             f"Python {m['python']}, "
             f"torch {m['torch']}, torchvision {m['torchvision']}, {m['torch_threads']} torch threads; "
             f"load average at start {meta['load_at_start']}",
             f"- Medians over {meta['repeats']} repeats; the two sides of each ratio run alternately in the same "
             "process run, on the same inputs.",
             *earlier_runs(meta, r), "",
             "| figure | measured | ratio | goal |", "|---|---|---:|---|"]
    if "ingest" in r:
        i = r["ingest"]
        lines.append(row(f"ingest whole Kaggle archive ({i['files']} files, {i['image_size']} px)",
                         f"{i['seconds']:.1f} s",
                         f"{i['files_per_second']:.0f} files/s", ""))
    for kind, label in (("eval", "no augmentation"), ("train", "training augmentation")):
        if "loader" in r:
            x = r["loader"][kind]
            lines.append(row(f"Parquet loader / ImageFolder over the same JPEGs, {label}",
                             f"{x['parquet_images_per_s']:.0f} vs {x['imagefolder_images_per_s']:.0f} images/s",
                             f"{x['speedup']:.2f}x", verdict(x["speedup"], GOALS["loader_" + kind])))
    if "profile" in r:
        x = r["profile"]
        lines.append(row(f"entropy profiling / plain inference "
                         f"({x['images']} images, {x['image_size']} px, {x['arch']})",
                         f"{x['profile_seconds']:.2f} vs {x['plain_seconds']:.2f} s", f"{x['ratio']:.2f}",
                         verdict(x["ratio"], GOALS["profile"])))
    for s in ("entropy", "head"):
        if "epoch" in r:
            x, full = r["epoch"], r["epoch"]["runs"]["full"]
            q, run = x["ratios"][s], x["runs"][s]
            lines.append(row(f"training step time, {s} / full ({x['layers'][s]} vs {x['layers']['full']} conv layers, "
                             f"{x['precision']})", f"{run['seconds']:.2f} vs {full['seconds']:.2f} s",
                             f"{q['time']:.2f}",
                             f"analytic: backward FLOPs {q['backward_flops']:.2f}, "
                             f"whole step FLOPs {q['step_flops']:.2f}"))
            lines.append(row(f"training memory, {s} / full (saved activations + gradients + AdamW state)",
                             f"{training_memory(run):.0f} vs {training_memory(full):.0f} MB",
                             f"{q['training_memory']:.2f}",
                             f"measured peak RSS growth while training: ratio {q['peak_rss_growth']:.2f} "
                             f"({run['peak_rss_growth_mb']:.0f} vs {full['peak_rss_growth_mb']:.0f} MB)"))
    if "precision" in r:
        x = r["precision"]
        lines.append(row("full fine-tuning step, fp32 NCHW / bf16 autocast + channels_last "
                         f"(native bf16: {x['native_bf16']})",
                         f"{x['fp32_nchw_seconds']:.2f} vs {x['bf16_channels_last_seconds']:.2f} s",
                         f"{x['speedup']:.2f}x faster with bf16", ""))
    if "pipeline" in r:
        x = r["pipeline"]
        lines.append(row("`entropy-ft run` via kfp.local / the same steps in one process",
                         f"{x['kfp_local_seconds']:.1f} vs {x['direct_seconds']:.1f} s", f"{x['ratio']:.2f}",
                         f"{verdict(x['ratio'], GOALS['pipeline'])}; {x['overhead_per_task_seconds']:.2f} s fixed "
                         f"per task ({x['tasks']} tasks): met from {x['direct_seconds_for_goal']:.0f} s of work"))
    if "ablation" in r:
        x = r["ablation"]
        lines.append(row(f"`entropy-ft run --pipeline ablation` via kfp.local / its {len(x['steps'])} steps run alone, "
                         f"one after another ({x['arguments']['image_size']} px, {x['arguments']['epochs']} epochs, "
                         f"{', '.join(x['arguments']['strategies'])})",
                         f"{x['kfp_local_seconds']:.0f} vs {x['steps_alone_seconds']:.0f} s", f"{x['ratio']:.2f}",
                         f"{verdict(x['ratio'], GOALS['ablation'])}; {x['overhead_per_task_seconds']:.1f} s "
                         "more per task"))
    if "floor" in r:
        x = r["floor"]
        for path in ("device", "loader"):
            rate = x["images_per_second"]
            goal = (verdict(x["ratio"][path], GOALS["floor"]) if path == x["auto_data_path"]
                    else "not the path `auto` takes here")
            lines.append(row(f"fine-tuning epoch, product ({path} data path) / bare loop on synthetic device tensors "
                             f"({x['train_images']} images, {x['image_size']} px, {x['arch']} {x['strategy']}, "
                             f"{x['precision']}, {x['device']})",
                             f"{rate[path]:.1f} vs {rate['bare']:.1f} images/s", f"{x['ratio'][path]:.2f}", goal))
    if "compile" in r:
        x = r["compile"]
        for mode, c in x["modes"].items():
            pays = (f"compile time {c['compile_seconds']:.0f} s won back after "
                    f"{c['pays_after_images']:,.0f} training images" if c["pays_after_images"] is not None
                    else f"never pays: the steady epoch is slower ({c['steady_ratio']:.2f})")
            lines.append(row(f"fine-tuning run, `--compile {mode}` / eager ({x['epochs']} epochs of "
                             f"{x['train_images']} images, {x['image_size']} px, {x['arch']} {x['strategy']}, "
                             f"{x['precision']}, {x['device']}, compile included)",
                             f"{c['run_seconds']:.1f} vs {x['eager']['run_seconds']:.1f} s; steady epoch "
                             f"{c['steady_epoch_seconds']:.2f} vs {x['eager']['steady_epoch_seconds']:.2f} s",
                             f"{c['run_ratio']:.2f}", pays))
    lines += ["", "## Settings", ""]
    for name, x in r.items():
        settings = {k: v for k, v in x.items() if not isinstance(v, (dict, list)) or k == "arguments"}
        lines.append(f"- {name}: `{json.dumps(settings)}`")
    return "\n".join(lines) + "\n"


def earlier_runs(meta: dict, r: dict) -> list[str]:
    """One line per earlier run whose figures this file keeps (``--only`` ran the others)."""
    kept: dict[str, list[str]] = {}
    for name, x in r.items():
        run = x.get("run", {})
        if run.get("started") != meta["started"]:
            kept.setdefault(json.dumps(run, sort_keys=True), []).append(name)
    return [f"- Kept from an earlier run ({', '.join(names)}): `{run['command']}`, {run['started']}, "
            f"{run['torch_threads']} torch threads, medians over {run['repeats']} repeats, load average at start "
            f"{run['load_at_start']}" for run, names in ((json.loads(k), v) for k, v in kept.items())]


def with_earlier(path: Path, results: dict) -> dict:
    """``results`` and, for the figures this run did not measure, those of the earlier ``path``, in figure order."""
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    earlier = {**{k: old[k] for k in ("command", "started", "load_at_start", "repeats")},
               "torch_threads": old["machine"]["torch_threads"]}
    merged = {**{name: {"run": earlier, **x} for name, x in old["results"].items()}, **results}
    return {name: merged[name] for name in FIGURES if name in merged}


def main(argv: list[str] | None = None) -> None:
    from entropy_ft.device import default_workers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    p.add_argument("--image-size", type=int, default=128, help="model input side for profiling and training steps")
    p.add_argument("--profile-images", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=8, help="optimizer steps (batch 32) per timed repeat")
    p.add_argument("--workers", type=int, default=default_workers(), help="DataLoader workers for the loader figure")
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--pipeline-images", type=int, default=400, help="synthetic images for the pipeline figure")
    p.add_argument("--pipeline-epochs", type=int, default=2)
    p.add_argument("--floor-images", type=int, default=600, help="synthetic images for the floor figure")
    p.add_argument("--floor-size", type=int, default=96, help="image side for the floor figure")
    p.add_argument("--compile-modes", default="default", type=lambda v: [m for m in v.split(",") if m],
                   help="torch.compile modes the compile figure measures against eager, e.g. default,reduce-overhead")
    p.add_argument("--compile-epochs", type=int, default=4, help="epochs per run of the compile figure")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the figures measured in fresh processes too
    from entropy_ft.training.loop import COMPILE_MODES

    if not args.compile_modes or set(args.compile_modes) - set(COMPILE_MODES[1:]):
        p.error(f"--compile-modes: a comma-separated subset of {','.join(COMPILE_MODES[1:])}")
    figures = {f.strip() for f in args.only.split(",") if f.strip()}
    if figures - set(FIGURES):
        p.error(f"--only: unknown {sorted(figures - set(FIGURES))}")
    args.weights = str(stand_in_weights.find(args.weights_dir, args.arch))
    os.environ.setdefault("ENTROPY_FT_NO_PROGRESS", "1")
    started = datetime.now(timezone.utc)
    load = os.getloadavg()[0]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="entropy-ft-perf-") as name:
        tmp = Path(name)
        if figures - {"pipeline", "ablation", "floor", "compile"}:
            out, dataset = ingest_and_loader(args, tmp, figures)
            results.update(out)
        if "profile" in figures:
            results["profile"] = profile_cost(args, dataset)
        if "epoch" in figures:
            results["epoch"] = epoch_cost(args, dataset)
        if "precision" in figures:
            results["precision"] = precision_cost(args, dataset)
        if "pipeline" in figures:
            results["pipeline"] = pipeline_cost(args, tmp)
        if "ablation" in figures:
            results["ablation"] = ablation_cost(args, tmp)
        if "floor" in figures:
            results["floor"] = floor_cost(args, tmp)
        if "compile" in figures:
            results["compile"] = compile_cost(args, tmp)
    finished = datetime.now(timezone.utc)
    meta = {"command": provenance.command("benchmarks/perf.py", sys.argv[1:] if argv is None else argv),
            "started": started.strftime("%Y-%m-%d %H:%M UTC"), "finished": finished.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": provenance.machine(), "repeats": args.repeats, "load_at_start": round(load, 2)}
    for x in results.values():
        x["run"] = {**{k: meta[k] for k in ("command", "started", "load_at_start", "repeats")},
                    "torch_threads": meta["machine"]["torch_threads"]}
    args.results.mkdir(parents=True, exist_ok=True)
    results = with_earlier(args.results / "perf.json", results)
    (args.results / "perf.json").write_text(
        json.dumps({"schema_version": 1, **meta, "results": results}, indent=2) + "\n")
    (args.results / "perf.md").write_text(markdown(meta, results))
    log(f"wrote {args.results / 'perf.md'}")


if __name__ == "__main__":
    main()

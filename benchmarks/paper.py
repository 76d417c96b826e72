"""Reproduce the paper's comparison on the real Kaggle brain-MRI archive: entropy-selected fine-tuning
against full, head-only and random (matched budget) fine-tuning, over several seeds.

    .venv/bin/python benchmarks/paper.py                     # quick: resnet18, 128 px, 3 epochs, 3 seeds
    .venv/bin/python benchmarks/paper.py --archs resnet18,resnet34,squeezenet1_1
    .venv/bin/python benchmarks/paper.py --cpu               # a CPU user's settings: 128 px, up to 12 epochs,
                                                             #   early stopping, plus the budget sweep
    .venv/bin/python benchmarks/paper.py --paper             # the paper's grid, for a GPU: 224 px, up to 30
                                                             #   epochs, 3 archs, plus the budget sweep
    .venv/bin/python benchmarks/paper.py --train-noise 0.2   # every run trained with Gaussian pixel noise

Steps, all through the library: the archive is ingested once per image size (cached under
``--cache``); per architecture one entropy profile (``steps.profile``) and the selections
(``steps.select``: entropy with the paper's below-mean rule, full, head, and random with the entropy
selection's parameter budget, one draw per seed); per (architecture, strategy, seed) one
fine-tuning run (``steps.finetune``) in a fresh process, so its peak memory is its own, then
test predictions at every noise sigma (``entropy_ft.evaluation.noise``, exactly as ``steps.evaluate``
draws them), scored twice: on the test split as shipped and on the test split without every
image that is an exact or near duplicate of a training (train or val) image, per the ingest
manifest's duplicate groups. Every score at every sigma comes with its 95% confidence interval
(percentile bootstrap over the test images, as ``steps.evaluate`` computes it) and the expected
calibration error of the temperature-scaled probabilities (the temperature ``steps.finetune``
fitted on the val split).

``--train-noise SIGMA_MAX[:P]`` fine-tunes every run with ``finetune --train-noise SIGMA_MAX
--train-noise-p P`` (P default 0.5) and names the results apart (``paper-train-noise``), so
the grid with and without training noise can sit side by side. Without it, ``--cpu`` trains with
the library's default noise (what a user of ``entropy-ft run`` gets), and the other presets with
none (``--train-noise 0``): the paper's recipe, and the committed tables before the default turned
it on.

Selection stability: the entropy selection comes from one sample of profiling images, so per
architecture the profile is repeated with every seed's sample (``profile --seed s``, no
fine-tuning) and the report counts the distinct below-mean layer sets and each layer's
frequency across seeds, beside what seed 0's bootstrap resamples (``profile --bootstrap``)
predict. The fine-tuning grid keeps seed 0's selection.

Budget sweep (``--budgets``, on with ``--cpu`` and ``--paper``): per architecture, entropy
against random at the same budget, ``select --rule budget:F`` for each share F of the conv
parameters, so whether entropy beats random is answered at several operating points, not only at
the one the below-mean rule happens to pick. The presets sweep 0.1, 0.25, 0.5, 0.75 and 0.9: the
paper's operating point, ~10% (ResNet18) to ~18% (ResNet34) fewer trainable parameters than full
fine-tuning, is a budget of about 0.9 (0.82 for ResNet34), not 0.1.

``--in-process`` (on with ``--paper``): the runs go one after another in this process, so the
dataset is read and uploaded to the device once (``entropy_ft.data.on_device.resident_split``);
otherwise each run has a fresh process and its peak RSS is its own.

Resumable: a run whose result JSON exists is skipped, and an interrupted fine-tuning run
resumes from its last epoch checkpoint, so re-running the same command continues a killed
benchmark. A result written before the CIs and ECE were recorded is re-scored from its saved
model, without fine-tuning again. Results (``--results``), rewritten after every run so that an
interrupted grid loses nothing: ``<name>.md`` (tables, command, date, machine, versions, settings,
runs done of planned), ``<name>.json`` and PNG plots. Never run in CI; the md is generated, never
edited.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import fresh_process
import numpy as np
import provenance
import stand_in_weights

from entropy_ft.selection.rules import PAPER_RULE, RULED, STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = Path(os.environ.get("ENTROPY_FT_KAGGLE_ZIP",
                                      ROOT.parent / "shared" / "data" / "brain-tumor-mri-kaggle.zip"))
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("ENTROPY_FT_WEIGHTS_DIR", ROOT.parent / "shared" / "weights"))
SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4)
TRAINING_SPLITS = ("train", "val")  # both come from the archive's Training/ folder and shape the model
# what each preset sets unless a flag says otherwise; early stopping (val macro-F1, --patience) ends most
# runs before their maximum epochs
PRESETS = {
    None: {"image_size": 128, "epochs": 3, "archs": "resnet18", "budgets": "", "budget_seeds": 1,
           "in_process": False, "library_train_noise": False, "name": "paper"},
    "cpu": {"image_size": 128, "epochs": 12, "archs": "resnet18", "budgets": "0.1,0.25,0.5,0.75,0.9",
            "budget_seeds": 1, "in_process": False, "library_train_noise": True, "name": "paper-cpu"},
    "paper": {"image_size": 224, "epochs": 30, "archs": "resnet18,resnet34,squeezenet1_1",
              "budgets": "0.1,0.25,0.5,0.75,0.9", "budget_seeds": 1, "in_process": True,
              "library_train_noise": False, "name": "paper-gpu"},
}


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} paper: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="the Kaggle zip (default: ../shared/data)")
    p.add_argument("--archs", default=None, help="comma-separated: resnet18,resnet34,squeezenet1_1")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR,
                         help="folder with <arch>-imagenette.pt or .safetensors (default: ../shared/weights)")
    weights.add_argument("--weights", default=None, help="one weight source for every arch, e.g. imagenet")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--paper", dest="preset", action="store_const", const="paper",
                        help="the paper's grid for a GPU: " + _preset_help("paper"))
    preset.add_argument("--cpu", dest="preset", action="store_const", const="cpu",
                        help="settings a CPU-only user would choose: " + _preset_help("cpu"))
    p.add_argument("--image-size", type=int, default=None, help="ingest and model input side in pixels")
    p.add_argument("--epochs", type=int, default=None, help="maximum fine-tuning epochs per run")
    p.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without a better val macro-F1 (default: finetune's)")
    p.add_argument("--budgets", default=None, metavar="F,F,...",
                   help="budget sweep: entropy against random at each share F of the conv parameters "
                        "(select --rule budget:F); empty for none")
    p.add_argument("--budget-seeds", type=int, default=None, help="seeds per budget-sweep run: 0..N-1")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run every fine-tuning in this process, one after another, so the dataset goes up to the "
                        "device once (default with --paper); else each in a fresh process, its peak RSS its own")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (arch, strategy): 0..N-1")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS), help="noise sigmas on [0, 1] pixels")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--profile-images", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="training precision: auto|fp32|bf16|fp16 (evaluation is fp32)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the library's)")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache", help="ingested data and run artifacts")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--train-noise", default=None, metavar="SIGMA_MAX[:P]",
                   help="fine-tune every run with Gaussian pixel noise: sigma ~ U(0, SIGMA_MAX) on a share P "
                        "(default 0.5) of the training images (finetune --train-noise/--train-noise-p)")
    p.add_argument("--name", default=None,
                   help="results file stem (default: the preset's, -train-noise or -no-train-noise appended when "
                        "--train-noise departs from it)")
    args = p.parse_args(argv)
    defaults = PRESETS[args.preset]
    named_noise = args.train_noise is not None
    if not named_noise and defaults["library_train_noise"]:
        args.train_noise = f"{_train_default('train_noise')}:{_train_default('train_noise_p')}"
    args.train_noise, args.train_noise_p = parse_train_noise(p, args.train_noise)
    for key in ("image_size", "epochs", "archs", "budgets", "budget_seeds", "in_process"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if not args.name:  # a named noise that departs from the preset's gets its own results
        departs = named_noise and bool(args.train_noise) != defaults["library_train_noise"]
        args.name = defaults["name"] + (("-train-noise" if args.train_noise else "-no-train-noise") if departs else "")
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    try:
        args.budgets = sorted({float(f) for f in args.budgets.split(",") if f.strip()})
    except ValueError:
        p.error(f"--budgets {args.budgets!r}: expected shares such as 0.1,0.25")
    if any(not 0 < f < 1 for f in args.budgets):
        p.error("--budgets: each share between 0 and 1")
    if args.budgets and not {"entropy", "random"} <= set(args.strategies.split(",")):
        p.error("--budgets: the sweep compares entropy with random; keep both in --strategies")
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.sigmas = sorted({float(s) for s in args.sigmas.split(",") if s.strip()} | {0.0})
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown or ("random" in args.strategies and "entropy" not in args.strategies):
        p.error(f"--strategies: expected a subset of {','.join(STRATEGIES)} (random needs entropy for its budget)")
    if args.seeds < 1 or args.budget_seeds < 1:
        p.error("--seeds and --budget-seeds: at least 1")
    if args.patience is None:
        args.patience = _train_default("patience")
    if args.patience < 1:
        p.error("--patience: at least 1")
    return args


def _train_default(name: str):
    """The library's default for one fine-tuning option, so a preset that follows it cannot drift."""
    from entropy_ft.training.loop import TrainConfig

    return getattr(TrainConfig, name)


def _preset_help(name: str) -> str:
    d = PRESETS[name]
    noise = "the library's default training noise" if d["library_train_noise"] else "no training noise"
    return (f"{d['image_size']} px, up to {d['epochs']} epochs, {d['archs']}, {noise}, budget sweep "
            f"{d['budgets']} ({d['budget_seeds']} seed), results {d['name']}.md")


def parse_train_noise(p: argparse.ArgumentParser, text: str | None) -> tuple[float, float]:
    """``SIGMA_MAX[:P]`` -> (sigma_max, p); None or 0 -> (0, 0.5), no noise."""
    if not text:
        return 0.0, 0.5
    try:
        parts = [float(v) for v in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not all(0 <= v <= 1 for v in parts) or (parts[0] and parts[-1] == 0):
        p.error(f"--train-noise {text!r}: expected SIGMA_MAX[:P], both in [0, 1], e.g. 0.2 or 0.2:0.5")
    return parts[0], (parts[1] if len(parts) == 2 else 0.5)


def weights_for(args: argparse.Namespace, arch: str) -> str:
    if args.weights:
        return args.weights
    return str(stand_in_weights.find(args.weights_dir, arch))


def settings(args: argparse.Namespace) -> dict:
    """Everything that decides a run's result; its hash names the run folder, so changed settings never
    reuse old runs. Training noise is there only when on, so runs without it keep their folders."""
    conf = {"image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "profile_images": args.profile_images, "sigmas": args.sigmas, "device": args.device,
            "precision": args.precision, "archive": args.archive.name,
            "weights": {a: Path(weights_for(args, a)).name if args.weights is None else args.weights
                        for a in args.archs}}
    if args.train_noise:
        conf["train_noise"] = {"sigma_max": args.train_noise, "p": args.train_noise_p}
    conf["patience"] = args.patience
    return conf


def arch_dirs(runs: Path, conf: dict) -> dict[str, Path]:
    """One run folder per architecture, named by the hash of the settings that decide its results
    (its own weights, not the other architectures'), so adding an architecture to ``--archs``
    reuses the finished runs of the others and changed settings never do."""
    dirs = {}
    for arch, weights in conf["weights"].items():
        own = {**conf, "arch": arch, "weights": weights}
        key = hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:12]
        dirs[arch] = runs / f"{arch}-{key}"
        dirs[arch].mkdir(parents=True, exist_ok=True)
        (dirs[arch] / "settings.json").write_text(json.dumps(own, indent=2) + "\n")
    return dirs


# ---------------------------------------------------------------- data


def ensure_dataset(archive: Path, image_size: int, cache: Path) -> Path:
    """The archive ingested at ``image_size`` (once; later calls reuse it)."""
    from entropy_ft.steps import ingest

    root = cache / f"kaggle-{image_size}px"
    if (root / "manifest.json").is_file():
        return root
    log(f"ingesting {archive} at {image_size} px into {root}")
    ingest.run(ingest.Config(sources=(str(archive),), out=str(root), image_size=image_size))
    return root


def leaked_test_images(root: Path) -> dict:
    """Test images that are an exact or near duplicate of a train/val image, from the manifest's groups."""
    from entropy_ft.data.format import load_manifest, read_split

    manifest = load_manifest(root)
    leaked: dict[str, str] = {}  # source name -> "exact" unless only a near group links it
    for group in manifest.duplicates["groups"]:
        splits = {m["split"] for m in group["members"]}
        if "test" in splits and splits & set(TRAINING_SPLITS):
            for m in group["members"]:
                if m["split"] == "test" and leaked.get(m["source"]) != "exact":
                    leaked[m["source"]] = group["kind"]
    sources = read_split(root, "test", columns=["source"]).column("source").to_pylist()
    keep = np.array([s not in leaked for s in sources])
    kinds = [leaked[s] for s in sources if s in leaked]
    return {"keep": keep, "test_images": len(sources), "removed": len(kinds),
            "removed_exact": kinds.count("exact"), "removed_near_only": kinds.count("near"),
            "duplicate_summary": manifest.duplicates["summary"], "totals": manifest.totals}


# ---------------------------------------------------------------- one fine-tuning run (in its own process)


def fine_tune_and_score(spec: dict) -> None:
    """Fine-tune one selection, score it at every sigma on both test sets, write the result JSON.
    ``spec["rescore"]``: the model is already trained (an earlier result without CIs or ECE); only score it."""
    os.environ["ENTROPY_FT_NO_PROGRESS"] = "1"
    import torch

    from entropy_ft import storage
    from entropy_ft.artifacts import Selection, TrainingHistory
    from entropy_ft.data.loader import LoaderConfig
    from entropy_ft.data.on_device import eval_batches
    from entropy_ft.device import resolve_device
    from entropy_ft.evaluation.calibration import reliability, softmax
    from entropy_ft.evaluation.metrics import classification_metrics
    from entropy_ft.evaluation.noise import noise_generator, predict
    from entropy_ft.evaluation.uncertainty import score_cis
    from entropy_ft.logs import setup_logging
    from entropy_ft.model.model_dir import load_model_dir
    from entropy_ft.steps import finetune

    setup_logging()  # the library's per-epoch lines on stderr
    started = time.perf_counter()
    device = resolve_device(spec["device"])
    earlier = json.loads(Path(spec["result"]).read_text()) if spec.get("rescore") else None
    if earlier is None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(spec["seed"])  # the new head's initialisation
        summary = finetune.run(finetune.Config(
            dataset=spec["dataset"], selection=spec["selection"], out=spec["model"], epochs=spec["epochs"],
            lr=spec["lr"], batch_size=spec["batch_size"], seed=spec["seed"], device=spec["device"],
            precision=spec["precision"], num_workers=spec["num_workers"], resume=True,
            train_noise=spec["train_noise"], train_noise_p=spec["train_noise_p"],  # 0: off, whatever the default
            patience=spec["patience"]))
        train_peak = _peak_memory_mb(device)
        history = TrainingHistory.read(spec["model"]).history

    model, meta = load_model_dir(spec["model"], device)
    classes = list(meta.classes)
    loader = eval_batches(spec["dataset"], "test",  # the resident test split where it fits, as evaluate reads it
                          LoaderConfig(batch_size=64, num_workers=0, image_size=meta.image_size, seed=spec["seed"]),
                          device)
    keep = np.array(spec["keep"], dtype=bool)
    scores: dict[str, list[dict]] = {"shipped": [], "dedup": []}
    predictions: dict[str, list[int]] = {}  # per sigma, the predicted class of every test image, in split order
    for sigma in spec["sigmas"]:  # one prediction pass per sigma; both test sets score the same predictions
        y, logits = predict(model, loader, device, noise_sigma=sigma, generator=noise_generator(spec["seed"], sigma))
        pred = logits.argmax(axis=1)
        predictions[f"{sigma:g}"] = pred.tolist()
        for name, mask in (("shipped", np.ones_like(keep)), ("dedup", keep)):
            m = classification_metrics(y[mask], pred[mask], classes)
            scores[name].append({"sigma": sigma, "images": int(mask.sum()),
                                 **{k: m[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")},
                                 "ci": score_cis(y[mask], pred[mask], len(classes), spec["seed"]),
                                 "ece": reliability(softmax(logits[mask], meta.temperature), y[mask])[0],
                                 "ece_uncalibrated": reliability(softmax(logits[mask]), y[mask])[0]})
    per_image = {"test_labels": y.tolist(), "test_predictions": predictions}  # paired tests on the same images
    if earlier is not None:
        storage.write_json(spec["result"], {**earlier, "test": scores, "temperature": meta.temperature,
                                            **per_image, "rescored": True})
        return
    selection = Selection.read(spec["selection"])
    # an epoch resumed mid-way was timed over part of its batches; the whole epochs say what one costs, and
    # their median what an epoch costs on a quiet machine
    timed = [h for h in history if not h.get("resumed_at_batch")] or history
    result = {
        "arch": spec["arch"], "strategy": spec["strategy"], "seed": spec["seed"], "rule": selection.rule,
        "budget": spec.get("budget"), "train_noise": spec.get("train_noise", 0.0),
        "train_noise_p": spec.get("train_noise_p") if spec.get("train_noise") else None,
        "temperature": meta.temperature,
        "selected_layers": len(selection.layers), "trainable_params": selection.trainable_params,
        "full_params": selection.full_params, "reduction_vs_full": selection.reduction_vs_full,
        "epochs_run": len(history), "stopped_early": summary.get("stopped_early"),
        "epoch_seconds": [h["seconds"] for h in history],
        "seconds_per_epoch": statistics.median(h["seconds"] for h in timed),
        "train_images_per_second": statistics.median(h["images_per_second"] for h in timed),
        "best_val_macro_f1": summary["best_val_macro_f1"], "device": summary["device"],
        "precision": summary["precision"], "peak_memory_mb": train_peak,
        "peak_memory_kind": "CUDA max_memory_allocated of the run" if device.type == "cuda" else (
            "max RSS of the one process running every run (cumulative, not per run)" if spec.get("in_process")
            else "max RSS of the run's own process"),
        "wall_seconds": time.perf_counter() - started, "test": scores, **per_image,
    }
    storage.write_json(spec["result"], result)


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_isolated(spec: dict) -> None:
    """One run in a fresh interpreter: its peak RSS is its own, a crash cannot take the benchmark down, and
    killing the benchmark stops the run too."""
    exitcode = fresh_process.run(fine_tune_and_score, spec)
    if exitcode != 0:
        raise SystemExit(f"run {spec['arch']} {spec['strategy']} seed {spec['seed']} failed (exit {exitcode})")


def has_new_metrics(result: dict) -> bool:
    """Whether a result records the 95% CIs and the ECE (results written before them do not)."""
    return all("ci" in row and "ece" in row for rows in result["test"].values() for row in rows)


# ---------------------------------------------------------------- the grid


def job_list(args) -> list[dict]:
    """The grid (arch x seed x strategy, the paper's below-mean rule), then the budget sweep (arch x budget x seed,
    entropy and random under ``budget:F``), in the order they run."""
    grid = [{"arch": a, "strategy": st, "seed": sd, "budget": None}
            for a in args.archs for sd in range(args.seeds) for st in args.strategies]
    sweep = [{"arch": a, "strategy": st, "seed": sd, "budget": f}
             for a in args.archs for f in args.budgets for sd in range(args.budget_seeds)
             for st in ("entropy", "random")]
    return grid + sweep


def job_name(job: dict) -> str:
    """What names a job's files: strategy, budget (sweep only), seed."""
    return job["strategy"] + (f"-b{job['budget']:g}" if job["budget"] is not None else "") + f"-s{job['seed']}"


def prepare_arch(args, arch: str, dataset: Path, work: Path, jobs: list[dict]) -> dict[str, str]:
    """Profile once, then one selection per job that needs its own: selection.json path by job name."""
    from entropy_ft.steps import profile, select

    profile_dir = work / "profile"
    if not (profile_dir / "profile.json").is_file():
        log(f"{arch}: profiling {args.profile_images} training images")
        profile.run(profile.Config(dataset=str(dataset), arch=arch, weights=weights_for(args, arch),
                                   out=str(profile_dir), images=args.profile_images, device=args.device))
    selections = {}
    for job in (j for j in jobs if j["arch"] == arch):
        seeded = job["strategy"] == "random"  # entropy, full and head do not depend on the seed
        budget = f"-b{job['budget']:g}" if job["budget"] is not None else ""
        out = work / (f"select-{job['strategy']}{budget}" + (f"-s{job['seed']}" if seeded else ""))
        if not (out / "selection.json").is_file():
            select.run(select.Config(profile=str(profile_dir), strategy=job["strategy"], out=str(out),
                                     seed=job["seed"] if seeded else 0,
                                     rule=f"budget:{job['budget']:g}" if job["budget"] is not None
                                     else PAPER_RULE if job["strategy"] in RULED else None))
        selections[job_name(job)] = str(out / "selection.json")
    return selections


def selection_stability(args, arch: str, dataset: Path, work: Path) -> dict:
    """The below-mean selection on each seed's sample of profiling images (seed 0's is the grid's
    profile): distinct layer sets, per-layer frequency and reduction spread across seeds, beside
    seed 0's bootstrap estimate of the same (None for a profile made without resamples)."""
    from entropy_ft.artifacts import Profile
    from entropy_ft.model.archs import backbone
    from entropy_ft.selection.rules import parse_rule, select_by_entropy
    from entropy_ft.selection.stability import summarize
    from entropy_ft.steps import profile

    profiles = []
    for seed in range(args.seeds):
        out = work / ("profile" if seed == 0 else f"profile-s{seed}")
        if not (out / "profile.json").is_file():
            log(f"{arch}: profiling seed {seed}'s sample of {args.profile_images} training images")
            profile.run(profile.Config(dataset=str(dataset), arch=arch, weights=weights_for(args, arch), out=str(out),
                                       images=args.profile_images, device=args.device, seed=seed))
        profiles.append(Profile.read(str(out)))
    structure = backbone(arch, profiles[0].num_classes)
    rule = parse_rule(PAPER_RULE)
    selections = [select_by_entropy(p.entropies(), structure.costs, rule) for p in profiles]
    boot = profiles[0].bootstrap
    return {"rule": str(rule), "seeds": len(profiles), "costs": structure.costs, "selections": selections,
            "reduction_by_seed": [structure.accounting(s)["reduction_vs_full"] for s in selections],
            "across_seeds": summarize(selections, structure),
            "bootstrap_seed_0": boot["rules"][str(rule)] if boot else None}


def stability_markdown(stability: dict[str, dict]) -> list[str]:
    """The report's section on how often entropy's choice changes with the sample of profiling images."""
    lines = ["", "## Stability of the entropy selection", "",
             "Below-mean selection on each seed's sample of profiling images (profiles only; the fine-tuning runs "
             "above use seed 0's), beside seed 0's bootstrap resamples of its batches. Reduction: fewer trainable "
             "parameters than full fine-tuning.", "",
             "| arch | seeds | distinct layer sets | reduction by seed | bootstrap resamples (seed 0) "
             "| distinct sets in resamples | reduction in resamples (5th to 95th pct.) |",
             "|---|---:|---:|---|---:|---:|---|"]
    for arch, st in stability.items():
        boot = st["bootstrap_seed_0"]
        by_seed = ", ".join(f"{100 * r:.1f}%" for r in st["reduction_by_seed"])
        lines.append(f"| {arch} | {st['seeds']} | {st['across_seeds']['distinct_sets']} | {by_seed} | "
                     + (f"{boot['resamples']} | {boot['distinct_sets']} | {100 * boot['reduction_vs_full']['p5']:.1f}% "
                        f"to {100 * boot['reduction_vs_full']['p95']:.1f}% |" if boot else "n/a | n/a | n/a |"))
    for arch, st in stability.items():
        boot = (st["bootstrap_seed_0"] or {}).get("frequency")
        lines += ["", f"### {arch}: share of selections that unfreeze each layer", "",
                  "| layer | params | across seeds | bootstrap (seed 0) |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {st['costs'][name]:,} | {share:.2f} | " + (f"{boot[name]:.2f} |" if boot else "n/a |")
                  for name, share in st["across_seeds"]["frequency"].items()]
    return lines


def run_grid(args, dataset: Path, leak: dict, work_dirs: dict[str, Path], jobs: list[dict],
             report: Callable[[list[dict]], None]) -> list[dict]:
    """Every job, one after another; ``report`` rewrites the results after each, so an interrupted grid
    loses at most the run in flight (which resumes from its last epoch checkpoint)."""
    selections = {arch: prepare_arch(args, arch, dataset, work_dirs[arch], jobs) for arch in args.archs}
    results: list[dict] = []
    done_times: list[float] = []
    for k, job in enumerate(jobs, 1):
        arch, name = job["arch"], job_name(job)
        what = f"[{k}/{len(jobs)}] {arch} {name}"
        work = work_dirs[arch]
        result_path = work / f"result-{name}.json"
        model_dir = work / f"model-{name}"
        rescore = (result_path.is_file() and not has_new_metrics(json.loads(result_path.read_text()))
                   and (model_dir / "model.json").is_file())
        if rescore:
            log(f"{what}: re-scoring the saved model (CIs, ECE)")
        if not result_path.is_file() or rescore:
            eta = f", about {statistics.mean(done_times) * (len(jobs) - k + 1) / 60:.0f} min left" if done_times else ""
            if not rescore:
                log(f"{what}: fine-tuning up to {args.epochs} epochs{eta}")
            started = time.perf_counter()
            spec = {
                **job, "dataset": str(dataset), "selection": selections[arch][name], "model": str(model_dir),
                "rescore": rescore, "train_noise": args.train_noise, "train_noise_p": args.train_noise_p,
                "result": str(result_path), "epochs": args.epochs, "patience": args.patience, "lr": args.lr,
                "batch_size": args.batch_size, "device": args.device, "precision": args.precision,
                "num_workers": args.num_workers, "sigmas": args.sigmas, "keep": leak["keep"].tolist(),
                "in_process": args.in_process,
            }
            fine_tune_and_score(spec) if args.in_process else run_isolated(spec)
            if not rescore:
                done_times.append(time.perf_counter() - started)
        result = json.loads(result_path.read_text())
        clean = result["test"]["shipped"][0]
        log(f"{what}: test accuracy {clean['accuracy']:.4f}, {result['epochs_run']} epochs, "
            f"{result['seconds_per_epoch']:.1f} s/epoch, {result['trainable_params']:,} trainable")
        results.append({**result, "budget": job["budget"]})
        report(results)
    return results


# ---------------------------------------------------------------- aggregation and report


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_std_or_none(values: list[float | None]) -> tuple[float, float | None] | None:
    """mean_std, or None when a run lacks the value (a result from before it was recorded, model gone)."""
    return None if any(v is None for v in values) else mean_std(values)


def aggregate(results: list[dict], sigmas: list[float]) -> list[dict]:
    """Mean and sample standard deviation over seeds per (arch, strategy)."""
    rows = []
    keys = sorted({(r["arch"], r["strategy"]) for r in results}, key=lambda k: (k[0], STRATEGIES.index(k[1])))
    for arch, strategy in keys:
        runs = [r for r in results if r["arch"] == arch and r["strategy"] == strategy]
        row = {"arch": arch, "strategy": strategy, "seeds": [r["seed"] for r in runs]}
        for key in ("trainable_params", "reduction_vs_full", "seconds_per_epoch", "peak_memory_mb", "selected_layers"):
            row[key] = mean_std([float(r[key]) for r in runs])
        for test in ("shipped", "dedup"):
            for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
                row[f"{test}_{metric}"] = mean_std([r["test"][test][0][metric] for r in runs])
            for i, sigma in enumerate(sigmas):
                row[f"{test}_accuracy_sigma_{sigma:g}"] = mean_std([r["test"][test][i]["accuracy"] for r in runs])
                row[f"{test}_ece_sigma_{sigma:g}"] = mean_std_or_none([r["test"][test][i].get("ece") for r in runs])
        rows.append(row)
    return rows


def entropy_against(results: list[dict]) -> list[dict]:
    """Per architecture, entropy's clean test accuracy minus full's and random's, paired by seed (a seed fixes
    both runs' new head, data order and augmentation, and random's draw), as shipped and deduplicated, with the
    two-sided paired t-test over seeds (``scipy.stats.ttest_rel``; None under two pairs, or when every pair
    differs by the same amount, where t is undefined). Over seeds, not images: the question is whether the
    method wins across training runs, and a test over one run's images would leave the run-to-run spread out."""
    from scipy import stats

    rows = []
    for arch in sorted({r["arch"] for r in results}):
        by = {(r["strategy"], r["seed"]): r for r in results if r["arch"] == arch}
        for other in ("full", "random"):
            seeds = sorted(s for st, s in by if st == "entropy" and (other, s) in by)
            if not seeds:
                continue
            row: dict = {"arch": arch, "other": other, "seeds": seeds}
            for test in ("shipped", "dedup"):
                e, o = ([by[(st, s)]["test"][test][0]["accuracy"] for s in seeds] for st in ("entropy", other))
                difference = mean_std([a - b for a, b in zip(e, o)])
                spread = difference[1] is not None and difference[1] > 1e-9  # accuracies are multiples of 1/n
                row[test] = {"difference": difference, "p": float(stats.ttest_rel(e, o).pvalue) if spread else None}
            rows.append(row)
    return rows


def entropy_against_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Entropy against full and random, paired by seed", "",
             "Entropy's clean test accuracy minus the other strategy's on the same seed, mean ± std over seeds, "
             "and the two-sided paired t-test over seeds (n/a under two seeds, or when every seed differs alike).", "",
             "| arch | entropy − | seeds | difference | p | difference (dedup) | p (dedup) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [f"{fmt(row[t]['difference'], 100, 1)} pp | "
                 + (f"{row[t]['p']:.3f}" if row[t]["p"] is not None else "n/a") for t in ("shipped", "dedup")]
        lines.append(f"| {row['arch']} | {row['other']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return lines


def budget_sweep(results: list[dict]) -> list[dict]:
    """Per (arch, budget): entropy against random at the same budget, mean over the sweep's seeds, and the
    paired difference (same seed) in clean accuracy as shipped and deduplicated."""
    rows = []
    for arch, budget in sorted({(r["arch"], r["budget"]) for r in results}):
        by = {st: {r["seed"]: r for r in results if (r["arch"], r["budget"], r["strategy"]) == (arch, budget, st)}
              for st in ("entropy", "random")}
        row: dict = {"arch": arch, "budget": budget}
        for st, runs in by.items():
            if runs:
                row[st] = {"seeds": sorted(runs),
                           "selected_layers": mean_std([r["selected_layers"] for r in runs.values()]),
                           "trainable_params": mean_std([r["trainable_params"] for r in runs.values()]),
                           "reduction_vs_full": mean_std([r["reduction_vs_full"] for r in runs.values()]),
                           "epochs_run": mean_std([r["epochs_run"] for r in runs.values()]),
                           **{f"{t}_accuracy": mean_std([r["test"][t][0]["accuracy"] for r in runs.values()])
                              for t in ("shipped", "dedup")}}
        paired = sorted(set(by["entropy"]) & set(by["random"]))
        if paired:
            row["entropy_minus_random"] = {t: mean_std([by["entropy"][s]["test"][t][0]["accuracy"]
                                                        - by["random"][s]["test"][t][0]["accuracy"] for s in paired])
                                           for t in ("shipped", "dedup")}
        rows.append(row)
    return rows


def fmt(ms: tuple[float, float | None] | None, scale: float = 1.0, digits: int = 3) -> str:
    if ms is None:
        return "n/a"
    mean, std = ms
    spec = f",.{digits}f"
    return f"{mean * scale:{spec}}" + (f" ± {std * scale:{spec}}" if std is not None else "")


def write_plots(args, rows: list[dict], work_dirs: dict[str, Path]) -> list[str]:
    from matplotlib.figure import Figure

    from entropy_ft import plots
    from entropy_ft.artifacts import Profile, Selection

    written = []

    def save(fig, name: str) -> None:
        (args.results / name).write_bytes(plots.png_bytes(fig))
        written.append(name)

    for arch in args.archs:
        profile = Profile.read(str(work_dirs[arch] / "profile"))
        selected = Selection.read(str(work_dirs[arch] / "select-entropy")).layers \
            if "entropy" in args.strategies else None
        save(plots.entropy_figure(profile.layers, selected=selected,
                                  title=f"{arch}: activation entropy per conv layer, below-mean selection"),
             f"{args.name}-{arch}-entropy.png")
        for test in ("shipped", "dedup"):
            series = {r["strategy"]: [r[f"{test}_accuracy_sigma_{s:g}"][0] for s in args.sigmas]
                      for r in rows if r["arch"] == arch}
            save(plots.line_figure(args.sigmas, series,
                                   title=f"{arch}: test accuracy under Gaussian noise ({test} test set)",
                                   xlabel="noise sigma (pixels in [0, 1])", ylabel="accuracy (mean over seeds)"),
                 f"{args.name}-{arch}-noise-{test}.png")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        acc, std = row["shipped_accuracy"]
        ax.errorbar([row["trainable_params"][0]], [acc], yerr=[std or 0.0], fmt="o", capsize=3,
                    color=plots.LINE_COLORS[STRATEGIES.index(row["strategy"])],
                    label=row["strategy"] if i == [r["strategy"] for r in rows].index(row["strategy"]) else None)
        ax.annotate(row["arch"], (row["trainable_params"][0], acc), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy, as shipped (mean ± std over seeds)")
    ax.set_title("Accuracy against trainable parameters")
    ax.legend(frameon=False)
    save(fig, f"{args.name}-accuracy-vs-params.png")
    return written


def write_sweep_plots(args, sweep: list[dict], rows: list[dict]) -> list[str]:
    """Per architecture, clean test accuracy against the share of full's trainable parameters each run really
    trained (a budget F is a cap the selection may fall well short of), for entropy and random under
    ``budget:F`` (mean ± std over the sweep's seeds); the grid's below-mean selection and its random match as
    hollow markers, and full fine-tuning as the line to reach."""
    from matplotlib.figure import Figure

    from entropy_ft import plots

    def share(x: dict) -> float:
        return 1 - x["reduction_vs_full"][0]

    written = []
    for arch in sorted({row["arch"] for row in sweep}):
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.add_subplot()
        for strategy in ("entropy", "random"):
            color = plots.LINE_COLORS[STRATEGIES.index(strategy)]
            points = [row for row in sweep if row["arch"] == arch and strategy in row]
            ax.errorbar([share(row[strategy]) for row in points],
                        [row[strategy]["shipped_accuracy"][0] for row in points],
                        yerr=[row[strategy]["shipped_accuracy"][1] or 0.0 for row in points], marker="o", capsize=3,
                        color=color, label=f"{strategy}, budget:F")
            if strategy == "entropy":
                for row in points:
                    ax.annotate(f"F={row['budget']:g}", (share(row[strategy]), row[strategy]["shipped_accuracy"][0]),
                                fontsize=7, xytext=(4, -10), textcoords="offset points")
            grid = next((row for row in rows if (row["arch"], row["strategy"]) == (arch, strategy)), None)
            if grid:
                ax.errorbar([share(grid)], [grid["shipped_accuracy"][0]], yerr=[grid["shipped_accuracy"][1] or 0.0],
                            marker="s", markerfacecolor="none", capsize=3, color=color, linestyle="none",
                            label=f"{strategy}, grid ({'below-mean' if strategy == 'entropy' else 'its budget'})")
        full = next((row for row in rows if (row["arch"], row["strategy"]) == (arch, "full")), None)
        if full:
            ax.axhline(full["shipped_accuracy"][0], linestyle="--", color=plots.LINE_COLORS[STRATEGIES.index("full")],
                       label="full fine-tuning (grid mean)")
            low, high = ax.get_ylim()
            ax.set_ylim(low, max(high, full["shipped_accuracy"][0] + 0.1 * (high - low)))
        ax.set_xlim(0, 1)
        ax.set_xlabel("trainable parameters, share of full fine-tuning's")
        ax.set_ylabel("test accuracy, as shipped")
        ax.set_title(f"{arch}: entropy against random at the same budget")
        ax.legend(frameon=False, fontsize=8, loc="lower right")  # high budgets sit high on the right
        name = f"{args.name}-{arch}-budget-sweep.png"
        (args.results / name).write_bytes(plots.png_bytes(fig))
        written.append(name)
    return written


def per_run_markdown(args, results: list[dict]) -> list[str]:
    """Each run's test accuracy [95% CI] at every sigma, as shipped and deduplicated."""
    lines = []
    for test, title in (("shipped", "as shipped"), ("dedup", "without duplicates of training images")):
        lines += ["", f"## Per run: test accuracy [95% CI] under Gaussian noise, test set {title}", "",
                  "| arch | strategy | seed | epochs | " + " | ".join(f"σ={x:g}" for x in args.sigmas) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(args.sigmas)]
        for r in sorted(results, key=lambda r: (r["arch"], r.get("budget") or 0, STRATEGIES.index(r["strategy"]),
                                                r["seed"])):
            cells = [f"{c['accuracy']:.3f}" + (f" [{c['ci']['accuracy'][0]:.3f}, {c['ci']['accuracy'][1]:.3f}]"
                                               if "ci" in c else " [n/a]") for c in r["test"][test]]
            label = r["strategy"] + (f" (budget {r['budget']:g})" if r.get("budget") is not None else "")
            stop = " (early stop)" if r.get("stopped_early") else ""
            lines.append(f"| {r['arch']} | {label} | {r['seed']} | {r['epochs_run']}{stop} | " + " | ".join(cells)
                         + " |")
    return lines


def sweep_markdown(sweep: list[dict], budget_seeds: int) -> list[str]:
    """The budget sweep: entropy against random at the same share of the conv parameters."""
    if not sweep:
        return []
    lines = ["", "## Budget sweep: entropy against random at the same budget", "",
             "`select --rule budget:F`: the lowest-entropy conv layers up to a share F of the conv parameters; "
             "random draws layers up to entropy's parameter count (short of it by less than one layer). "
             f"Mean over {budget_seeds} seed(s); difference: entropy minus random on the same seed, clean test "
             "accuracy.", "",
             "| arch | budget F | layers entropy / random | reduction vs full entropy / random "
             "| epochs entropy / random | accuracy entropy | accuracy random | entropy − random "
             "| entropy − random (dedup) |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for row in sweep:
        e, r, d = row.get("entropy"), row.get("random"), row.get("entropy_minus_random")

        def cell(x: dict | None, key: str, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
            return fmt(x[key], scale, digits) + unit if x else "n/a"

        lines.append(
            f"| {row['arch']} | {row['budget']:g} | {cell(e, 'selected_layers', digits=0)} / "
            f"{cell(r, 'selected_layers', digits=0)} | {cell(e, 'reduction_vs_full', 100, 1, '%')} / "
            f"{cell(r, 'reduction_vs_full', 100, 1, '%')} "
            f"| {cell(e, 'epochs_run', digits=0)} / {cell(r, 'epochs_run', digits=0)} "
            f"| {cell(e, 'shipped_accuracy')} | {cell(r, 'shipped_accuracy')} "
            f"| {cell(d, 'shipped', 100, 1, ' pp')} | {cell(d, 'dedup', 100, 1, ' pp')} |")
    return lines


def markdown(args, meta: dict, rows: list[dict], leak: dict, plots_written: list[str], stability: dict,
             results: list[dict], against: list[dict], sweep: list[dict]) -> str:
    s = meta["settings"]
    dup = leak["duplicate_summary"]
    lines = [
        f"# Paper reproduction: entropy-selected fine-tuning on the Kaggle brain-MRI archive ({args.name})",
        "",
        "Generated by `benchmarks/paper.py`; do not edit by hand.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Started {meta['started']}, finished {meta['finished']} ({meta['wall_minutes']:.0f} min in this invocation; "
        "runs finished by an earlier invocation with the same settings for that architecture are reused); "
        f"**{meta['runs_done']} of {meta['runs_planned']} runs done**"
        + ("" if meta["runs_done"] == meta["runs_planned"] else
           " (the rest run when the same command is invoked again; this file is rewritten after every run)"),
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['memory_gib']} GiB"
        + (f", GPU {meta['machine']['gpu']}" if meta["machine"].get("gpu") else ", no GPU")
        + f"; Python {meta['machine']['python']}, torch {meta['machine']['torch']}, "
        f"torchvision {meta['machine']['torchvision']}"
        + f"; 1-minute load average {meta['load_at_start']} at start, {meta['load_at_end']} at end",
        f"- Settings: {s['image_size']} px, up to {s['epochs']} epochs (early stopping on val macro-F1, patience "
        f"{s['patience']}), batch {s['batch_size']}, AdamW lr {s['lr']}, "
        f"seeds {', '.join(map(str, range(args.seeds)))}, {s['profile_images']} profiling images (conv tap, histogram "
        f"estimator, 256 bins), entropy rule below-mean, random = same parameter budget as entropy; training precision "
        f"{meta['precision']} on {meta['device']}, evaluation fp32; "
        f"noise sigmas {', '.join(f'{x:g}' for x in args.sigmas)}; training noise "
        + (f"sigma ~ U(0, {args.train_noise:g}) on {100 * args.train_noise_p:g}% of the training images "
           "(finetune --train-noise/--train-noise-p)" if args.train_noise else "none"),
        f"- Weights: {', '.join(f'{a}: {w}' for a, w in s['weights'].items())} "
        "(Imagenette state_dicts stand in for ImageNet)",
        f"- Data: {args.archive.name}, ingested at {s['image_size']} px: "
        + ", ".join(f"{k} {v}" for k, v in leak["totals"].items())
        + (f". Duplicate report: {dup['exact_groups']} exact groups, {dup['near_groups']} near groups, "
           f"{dup['cross_split_exact_groups']} exact and {dup['cross_split_near_groups']} near groups cross splits."
           if dup else ". No duplicate report (ingest checked none, e.g. synthetic data)."),
        f"- **Deduplicated test set**: {leak['removed']} of {leak['test_images']} test images removed "
        f"({100 * leak['removed'] / leak['test_images']:.1f}%) because they are an exact ({leak['removed_exact']}) "
        f"or only a near ({leak['removed_near_only']}) duplicate of a train or val image; "
        f"{leak['test_images'] - leak['removed']} remain. "
        "Both test sets score the same predictions.",
        "",
        "Mean ± sample standard deviation over seeds. ECE: expected calibration error of the temperature-scaled "
        "probabilities (15 equal-width bins, temperature fitted on the val split), as `entropy-ft evaluate` reports "
        "it. Per run, 95% confidence intervals: percentile bootstrap over the test images (1,000 resamples). "
        "Seconds per epoch: training batches only (validation excluded), the median over the run's whole "
        "epochs (one slowed by other work on the machine moves it little). "
        f"Peak memory: {meta['peak_memory_kind']}, read at the end of training (before evaluation).",
        "",
        "## Parameters, cost and clean test metrics",
        "",
        "| arch | strategy | conv layers unfrozen | trainable params | reduction vs full | s / epoch "
        "| peak memory (MB) | accuracy | macro-F1 | balanced acc. | ECE | accuracy (dedup) | macro-F1 (dedup) "
        "| balanced acc. (dedup) | ECE (dedup) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['strategy']} | {fmt(r['selected_layers'], digits=0)} "
            f"| {fmt(r['trainable_params'], digits=0)} | {fmt(r['reduction_vs_full'], 100, 1)}% "
            f"| {fmt(r['seconds_per_epoch'], digits=1)} | {fmt(r['peak_memory_mb'], digits=0)} "
            + "".join(f"| {fmt(r[f'{t}_{m}'])} " for t in ("shipped", "dedup")
                      for m in ("accuracy", "macro_f1", "balanced_accuracy", "ece_sigma_0"))
            + "|")
    for test, title in (("shipped", "as shipped"), ("dedup", "without duplicates of training images")):
        lines += ["", f"## Accuracy under Gaussian noise, test set {title}", "",
                  "| arch | strategy | " + " | ".join(f"σ={x:g}" for x in args.sigmas) + " |",
                  "|---|---|" + "---:|" * len(args.sigmas)]
        for r in rows:
            lines.append(f"| {r['arch']} | {r['strategy']} | "
                         + " | ".join(fmt(r[f"{test}_accuracy_sigma_{x:g}"]) for x in args.sigmas) + " |")
    lines += ["", "## Expected calibration error under Gaussian noise, test set as shipped", "",
              "| arch | strategy | " + " | ".join(f"σ={x:g}" for x in args.sigmas) + " |",
              "|---|---|" + "---:|" * len(args.sigmas)]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['strategy']} | "
                     + " | ".join(fmt(r[f"shipped_ece_sigma_{x:g}"]) for x in args.sigmas) + " |")
    lines += entropy_against_markdown(against)
    lines += sweep_markdown(sweep, args.budget_seeds)
    lines += per_run_markdown(args, results)
    lines += stability_markdown(stability)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots_written] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("ENTROPY_FT_NO_PROGRESS", "1")
    started = datetime.now(timezone.utc)
    load_at_start = round(os.getloadavg()[0], 2)
    conf = settings(args)
    work_dirs = arch_dirs(args.cache / "paper-runs", conf)
    log(f"settings {json.dumps(conf)}; runs under {', '.join(str(d) for d in work_dirs.values())}")

    dataset = ensure_dataset(args.archive, args.image_size, args.cache)
    leak = leaked_test_images(dataset)
    log(f"test set: {leak['removed']} of {leak['test_images']} images duplicate a train/val image")
    stability = {arch: selection_stability(args, arch, dataset, work_dirs[arch]) for arch in args.archs}
    jobs = job_list(args)
    command = provenance.command("benchmarks/paper.py", sys.argv[1:] if argv is None else argv)
    args.results.mkdir(parents=True, exist_ok=True)

    def report(results: list[dict]) -> None:
        """Rewrite <name>.json, <name>.md and the plots from the runs finished so far."""
        grid = [r for r in results if r.get("budget") is None]
        rows = aggregate(grid, args.sigmas)
        finished = datetime.now(timezone.utc)
        meta = {
            "command": command, "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "finished": finished.strftime("%Y-%m-%d %H:%M UTC"),
            "wall_minutes": (finished - started).total_seconds() / 60, "machine": provenance.machine(),
            "settings": conf,
            "load_at_start": load_at_start, "load_at_end": round(os.getloadavg()[0], 2),
            "device": results[0]["device"], "precision": results[0]["precision"],
            "peak_memory_kind": results[0]["peak_memory_kind"], "runs_done": len(results), "runs_planned": len(jobs),
            "budgets": args.budgets, "budget_seeds": args.budget_seeds,
        }
        against = entropy_against(grid)
        sweep = budget_sweep([r for r in results if r.get("budget") is not None])
        plots_written = (write_plots(args, rows, work_dirs) if rows else []) + write_sweep_plots(args, sweep, rows)
        leak_json = {k: v for k, v in leak.items() if k != "keep"}
        (args.results / f"{args.name}.json").write_text(json.dumps(
            {"schema_version": 3, **meta, "test_dedup": leak_json, "summary": rows, "entropy_against": against,
             "budget_sweep": sweep, "selection_stability": stability, "runs": results}, indent=2) + "\n")
        (args.results / f"{args.name}.md").write_text(markdown(args, meta, rows, leak_json, plots_written, stability,
                                                               results, against, sweep))

    run_grid(args, dataset, leak, work_dirs, jobs, report)
    log(f"wrote {args.results / (args.name + '.md')}")


if __name__ == "__main__":
    main()

"""Benchmark: does training with Gaussian pixel noise keep the model from collapsing under noise, and at what cost?

    .venv/bin/python benchmarks/train_noise.py [--archive ZIP] [--weights-dir DIR] [--arch resnet18]
        [--image-size 96] [--epochs 2] [--seeds 0,1,2] [--configs 0:0.5,0.2:0.5,0.2:0.25]

On the real Kaggle archive with the shared weights, per seed: one ingest (the seed draws the val
split), one entropy profile and below-mean selection, then one fine-tuning per ``SIGMA_MAX:P``
configuration of ``--train-noise`` / ``--train-noise-p`` (0 is the baseline without noise), each
evaluated on the shipped test split at sigma 0 to 0.4. Every configuration of a seed shares that
seed's data, selection, head initialisation and shuffle, so its difference from the baseline of
the same seed is a paired one. Writes ``benchmarks/results/train_noise.{json,md}``: over seeds,
the mean ± sample std of accuracy at every sigma, the per-seed paired clean difference against no
noise and the share of test images called ``notumor`` (the collapse the noise causes); per run,
accuracy with its 95% CI at every sigma, macro-F1, ECE and seconds.

Resumable: a run whose ``row.json`` is in the cache (``benchmarks/.cache/train_noise/<key>``, per
archive, arch, image size and seed; the run folder names the epochs and configuration) is reused,
and an interrupted fine-tuning resumes from its checkpoint (bit-exact on the CPU), so re-running
continues an interrupted benchmark; delete the cache after changing the library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from entropy_ft.artifacts import Evaluation, ModelMeta
from entropy_ft.selection.rules import PAPER_RULE
from entropy_ft.steps import evaluate, finetune, ingest, profile, select

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_KAGGLE_ZIP", SHARED / "data" / "brain-tumor-mri-kaggle.zip")))
    p.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("ENTROPY_FT_WEIGHTS_DIR",
                                                                          SHARED / "weights")))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--configs", default="0:0.5,0.2:0.5,0.2:0.25",
                   help="SIGMA_MAX:P, comma-separated (0:P, the baseline without noise, is always run)")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "train_noise")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_noise")
    args = p.parse_args(argv)
    try:
        args.seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
        configs = [tuple(float(v) for v in item.split(":")) for item in args.configs.split(",") if item.strip()]
    except ValueError:
        p.error("--seeds: integers; --configs: SIGMA_MAX:P pairs")
    if not args.seeds or any(len(c) != 2 for c in configs):
        p.error("--seeds: at least one; --configs: SIGMA_MAX:P pairs")
    baseline = [c for c in configs if not c[0]][:1] or [(0.0, 0.5)]
    args.configs = baseline + list(dict.fromkeys(c for c in configs if c[0]))
    return args


def run_seed(args: argparse.Namespace, seed: int) -> list[dict]:
    """Ingest, profile and select once for the seed (cached), then one fine-tuning and evaluation per config."""
    key = hashlib.sha256(json.dumps([args.archive.name, args.arch, args.image_size, seed]).encode()).hexdigest()
    work = args.cache / key[:12]
    weights = str(args.weights_dir / f"{args.arch}-imagenette.pt")
    data, prof, sel = work / "data", work / "profile", work / "selection"
    if not (data / "manifest.json").exists():
        ingest.run(ingest.Config(sources=(str(args.archive),), out=str(data), image_size=args.image_size, seed=seed))
    if not (prof / "profile.json").exists():
        profile.run(profile.Config(dataset=str(data), arch=args.arch, weights=weights, out=str(prof), seed=seed))
    # the paper's rule, as the committed results were made; the cache key does not version the rule
    select.run(select.Config(profile=str(prof), strategy="entropy", rule=PAPER_RULE, out=str(sel)))
    rows = []
    for sigma_max, p in args.configs:
        name = f"e{args.epochs}-noise-{sigma_max:g}-{p:g}"
        done = work / name / "row.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            print(f"seed {seed} {name}: cached {done}", flush=True)
            continue
        started = time.perf_counter()
        finetune.run(finetune.Config(dataset=str(data), selection=str(sel), out=str(work / name), epochs=args.epochs,
                                     seed=seed, train_noise=sigma_max, train_noise_p=p, resume=True))
        seconds = time.perf_counter() - started
        evaluate.run(evaluate.Config(model=str(work / name), dataset=str(data), out=str(work / f"{name}-eval"),
                                     noise=SIGMAS, seed=seed, gradcam=0))
        report = Evaluation.read(str(work / f"{name}-eval"))
        meta = ModelMeta.read(str(work / name))
        notumor = report.classes.index("notumor")
        row = {
            "seed": seed, "train_noise": sigma_max, "train_noise_p": p if sigma_max else None,
            "finetune_seconds": round(seconds, 1), "load_average_1min": round(os.getloadavg()[0], 2),
            "temperature": meta.calibration["temperature"], "test_images": report.num_images,
            "true_notumor": sum(report.confusion_matrix[notumor]) / report.num_images,
            "by_sigma": {f"{r['sigma']:g}": {
                "accuracy": r["accuracy"], "accuracy_ci": r["ci"]["accuracy"], "macro_f1": r["macro_f1"],
                "ece": r["ece"],
                "called_notumor": sum(row[notumor] for row in r["confusion_matrix"]) / report.num_images,
            } for r in report.noise},
        }
        done.write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def code_version() -> dict:
    """The checkout the library came from, and whether entropy_ft/ differed from that commit."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "library_modified": bool(git("status", "--porcelain", "--", "entropy_ft"))}


def mean_std(values: list[float]) -> list[float | None]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None]


def summarize(rows: list[dict], configs: list[tuple[float, float]], seeds: list[int]) -> list[dict]:
    """Per config over seeds: mean ± std at every sigma, and the paired difference from the same seed's baseline."""
    base = {r["seed"]: r for r in rows if not r["train_noise"]}
    out = []
    for sigma_max, p in configs:
        runs = [r for r in rows if r["train_noise"] == sigma_max and (not sigma_max or r["train_noise_p"] == p)]
        runs.sort(key=lambda r: seeds.index(r["seed"]))
        entry = {"train_noise": sigma_max, "train_noise_p": p if sigma_max else None,
                 "seeds": [r["seed"] for r in runs], "by_sigma": {}}
        for s in runs[0]["by_sigma"]:
            cells = [r["by_sigma"][s] for r in runs]
            diffs = [r["by_sigma"][s]["accuracy"] - base[r["seed"]]["by_sigma"][s]["accuracy"] for r in runs]
            entry["by_sigma"][s] = {
                "accuracy": mean_std([c["accuracy"] for c in cells]),
                "macro_f1": mean_std([c["macro_f1"] for c in cells]),
                "ece": mean_std([c["ece"] for c in cells]),
                "called_notumor": mean_std([c["called_notumor"] for c in cells]),
                "accuracy_minus_baseline_by_seed": diffs,
                "accuracy_minus_baseline": mean_std(diffs),
            }
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_at_start = round(os.getloadavg()[0], 2)
    code = code_version()  # what this process imported, not what the checkout holds when it ends
    rows = [row for seed in args.seeds for row in run_seed(args, seed)]
    settings = {"archive": args.archive.name, "arch": args.arch, "weights": f"{args.arch}-imagenette.pt",
                "image_size": args.image_size, "epochs": args.epochs, "seeds": args.seeds,
                "selection": "entropy below-mean", "test_images": rows[0]["test_images"],
                "true_notumor": rows[0]["true_notumor"], "started": started,
                "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "code": code,
                "cpus": os.cpu_count(),
                "load_average_1min_at_start": load_at_start, "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    summary = summarize(rows, args.configs, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"settings": settings, "summary": summary, "rows": rows},
                                                        indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(settings, summary, rows))
    print(args.out.with_suffix(".md").read_text())


def _config(row: dict) -> str:
    return "none" if not row["train_noise"] else f"U(0, {row['train_noise']:g}) on {100 * row['train_noise_p']:g}%"


def _ms(ms: list, scale: float = 1.0, digits: int = 3, sign: bool = False) -> str:
    mean, std = ms
    spec = f"{'+' if sign else ''}.{digits}f"
    return f"{mean * scale:{spec}}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def markdown(settings: dict, summary: list[dict], rows: list[dict]) -> str:
    seeds = settings["seeds"]
    n = len(seeds)
    lines = [
        "# Training with Gaussian pixel noise",
        "",
        f"`benchmarks/train_noise.py`: {settings['archive']}, {settings['arch']} ({settings['weights']}), "
        f"{settings['image_size']} px, {settings['epochs']} epochs, seed{'s' if n > 1 else ''} "
        f"{', '.join(map(str, seeds))} (each seed its own val split, profile, selection, head initialisation and "
        f"shuffle), {settings['selection']}; {settings['test_images']} test images as shipped, "
        f"{100 * settings['true_notumor']:.1f}% of them notumor. Library at commit "
        f"{(settings['code']['commit'] or 'unknown')[:7]}"
        f"{' with uncommitted changes' if settings['code']['library_modified'] else ''}. "
        f"This invocation ran {settings['started']} to {settings['finished']} on {settings['cpus']} CPUs shared with "
        f"other work (1-minute load average {settings['load_average_1min_at_start']} at start, "
        f"{settings['load_average_1min_at_end']} at end); fine-tuning seconds are wall time under the load average "
        "in brackets, each run's own (a run found in the cache keeps those of the invocation that made it).",
        "",
        f"## Over {n} seed{'s' if n > 1 else ''}: mean{' ± sample std' if n > 1 else ''}",
        "",
        "Test accuracy by evaluation noise sigma:",
        "",
        "| training noise | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |",
        "|---|" + "---:|" * len(SIGMAS),
    ]
    for entry in summary:
        lines.append(f"| {_config(entry)} | "
                     + " | ".join(_ms(c["accuracy"]) for c in entry["by_sigma"].values()) + " |")
    lines += ["", "Paired difference from no training noise on the same seed, in accuracy points (pp), and the "
              f"collapse (share of test images called notumor; the true share is {settings['true_notumor']:.3f}):", "",
              "| training noise | clean: pp by seed | clean: mean ± std (pp) | sigma 0.2: mean (pp) "
              "| sigma 0.3: mean (pp) | called notumor at 0 / 0.2 / 0.3 | macro-F1 at 0 / 0.2 | ECE at 0 |",
              "|---|---|---:|---:|---:|---|---|---:|"]
    for entry in summary:
        s = entry["by_sigma"]
        by_seed = ", ".join(f"{100 * d:+.1f}" for d in s["0"]["accuracy_minus_baseline_by_seed"])
        lines.append(
            f"| {_config(entry)} | {by_seed} | {_ms(s['0']['accuracy_minus_baseline'], 100, 1, True)} "
            f"| {100 * s['0.2']['accuracy_minus_baseline'][0]:+.1f} "
            f"| {100 * s['0.3']['accuracy_minus_baseline'][0]:+.1f} "
            f"| {s['0']['called_notumor'][0]:.3f} / {s['0.2']['called_notumor'][0]:.3f} / "
            f"{s['0.3']['called_notumor'][0]:.3f} | {s['0']['macro_f1'][0]:.3f} / {s['0.2']['macro_f1'][0]:.3f} "
            f"| {s['0']['ece'][0]:.3f} |")
    for seed in seeds:
        runs = [r for r in rows if r["seed"] == seed]
        lines += ["", f"## Seed {seed}", "", "Test accuracy [95% CI] by evaluation noise sigma:", "",
                  "| training noise | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |",
                  "|---|" + "---:|" * len(SIGMAS)]
        for row in runs:
            cells = [f"{c['accuracy']:.3f} [{c['accuracy_ci'][0]:.3f}, {c['accuracy_ci'][1]:.3f}]"
                     for c in row["by_sigma"].values()]
            lines.append(f"| {_config(row)} | " + " | ".join(cells) + " |")
        lines += ["", "| training noise | called notumor at 0 / 0.2 / 0.3 | macro-F1 at 0 / 0.2 | ECE at 0 | T (val) "
                  "| fine-tuning s (load) |", "|---|---|---|---:|---:|---:|"]
        for row in runs:
            s = row["by_sigma"]
            lines.append(
                f"| {_config(row)} | {s['0']['called_notumor']:.3f} / {s['0.2']['called_notumor']:.3f} / "
                f"{s['0.3']['called_notumor']:.3f} | {s['0']['macro_f1']:.3f} / {s['0.2']['macro_f1']:.3f} | "
                f"{s['0']['ece']:.3f} | {row['temperature']:.3f} | {row['finetune_seconds']:.0f} "
                f"({row['load_average_1min']:g}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

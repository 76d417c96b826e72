"""Benchmark: two weeks of scheduled retraining on a growing bucket. Do splits hold, and does the gate?

    .venv/bin/python benchmarks/retrain.py [--archive ZIP] [--weights-dir DIR] [--arch resnet18]
        [--image-size 64] [--epochs 1] [--per-class 0]

The real Kaggle archive, both folders merged into one class-folder bucket, so the test split
is drawn by ingest rather than fixed by Testing/ (the hard case). "Week 2" is the whole bucket
(or ``--per-class`` files a class), "week 1" every other file of it. Then:

1. ingest week 1; ingest week 2 without and with ``--extends`` week 1; count week-1 images that
   changed split, and week-1 train/val images that landed in week 2's test split;
2. a good week-1 model (entropy below-mean selection) becomes champion;
3. a week-2 model trained with a broken recipe (``--lr 1e-7``) and two week-2 models from the
   good recipe with other seeds are registered in turn; each gate decision, the paired delta
   with its 95% CI and p-value, and the drift report against the champion's data are recorded.

Writes ``benchmarks/results/retrain.{json,md}``. Tracking goes to a throwaway embedded MLflow
store under the work folder (``MLFLOW_TRACKING_URI`` overrides it). ``tests/test_retrain.py``
runs the same story at smaller settings and checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

from entropy_ft.data.format import SPLITS, read_split
from entropy_ft.steps import evaluate, finetune, ingest, profile, register, select

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = "retrain-benchmark"


def buckets(archive: Path, out: Path, per_class: int = 0) -> tuple[Path, Path]:
    """Week 1 and week 2 as class-folder zips from the archive (both of its folders, merged)."""
    by_class: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and parts[2].lower().endswith((".jpg", ".jpeg", ".png")):
                by_class[parts[1]].append(name)
        week2 = sorted(n for names in by_class.values() for n in (names[:per_class] if per_class else names))
        week1 = week2[::2]
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for label, members in (("week1", week1), ("week2", week2)):
            path = out / f"{label}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
                for name in members:
                    folder, cls, file = name.split("/")
                    dst.writestr(f"{cls}/{folder}-{file}", zf.read(name))
            paths.append(path)
    return paths[0], paths[1]


def splits_by_file(dataset: Path) -> dict[str, str]:
    """Each image's split, by where it is in its source (the row's ``source`` less the archive's name, which
    differs between the weeks): by file, not by pixels, since copies of one image share their pixels."""
    return {ingest.place(source): split for split in SPLITS
            for source in read_split(dataset, split, ["source"]).column("source").to_pylist()}


def kaggle_weeks(archive: Path, out: Path) -> tuple[Path, Path]:
    """Week 1 as every other JPEG of the archive (sorted names, both folders) in its own layout; week 2 the
    archive itself. Kaggle's Training/ and Testing/ hold copies of some scans, so week 1 holds some images in
    train or val and in test at once."""
    out.mkdir(parents=True, exist_ok=True)
    week1 = out / "week1-kaggle.zip"
    with zipfile.ZipFile(archive) as zf, zipfile.ZipFile(week1, "w", zipfile.ZIP_STORED) as dst:
        for name in sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))[::2]:
            dst.writestr(name, zf.read(name))
    return week1, archive


def kaggle_layout_stability(archive: Path, work: Path, sizes: tuple[int, ...], seed: int = 0) -> dict:
    """The Kaggle layout kept (Testing/ fixes the test split): week-1 files that changed split, per image size."""
    week1_zip, week2_zip = kaggle_weeks(archive, work / "kaggle-weeks")
    out = {}
    for size in sizes:
        ds1, plain, extended = (work / f"kaggle-{name}-{size}" for name in ("week1", "week2-plain", "week2"))
        common = {"image_size": size, "seed": seed}
        ingest.run(ingest.Config(sources=(str(week1_zip),), out=str(ds1), **common))
        ingest.run(ingest.Config(sources=(str(week2_zip),), out=str(plain), **common))
        ingest.run(ingest.Config(sources=(str(week2_zip),), out=str(extended), extends=str(ds1), **common))
        out[f"{size} px"] = {"without --extends": split_stability(ds1, plain),
                             "with --extends": split_stability(ds1, extended)}
    return out


def split_stability(week1: Path, week2: Path) -> dict:
    """How many week-1 images changed split in week 2, and how many week-1 train/val images are in week 2's test."""
    before, after = splits_by_file(week1), splits_by_file(week2)
    common = [f for f in before if f in after]
    return {"week1_images": len(before), "in_week2": len(common),
            "moved": sum(before[s] != after[s] for s in common),
            "train_val_now_test": sum(before[s] in ("train", "val") and after[s] == "test" for s in common)}


def story(archive: Path, weights_dir: Path, work: Path, *, arch: str = "resnet18", image_size: int = 64,
          epochs: int = 1, per_class: int = 0, seed: int = 0) -> dict:
    """Run the two weeks; returns what happened (see the module docstring)."""
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - started, 1)
        return result

    week1_zip, week2_zip = buckets(archive, work / "buckets", per_class)
    ds1, ds2_plain, ds2 = work / "week1", work / "week2-plain", work / "week2"
    common = {"image_size": image_size, "seed": seed}
    timed("ingest week 1", ingest.run, ingest.Config(sources=(str(week1_zip),), out=str(ds1), **common))
    timed("ingest week 2", ingest.run, ingest.Config(sources=(str(week2_zip),), out=str(ds2_plain), **common))
    timed("ingest week 2 --extends", ingest.run,
          ingest.Config(sources=(str(week2_zip),), out=str(ds2), extends=str(ds1), **common))
    splits = {"without --extends": split_stability(ds1, ds2_plain), "with --extends": split_stability(ds1, ds2)}

    weights = str(weights_dir / f"{arch}-imagenette.pt")
    timed("profile", profile.run, profile.Config(dataset=str(ds1), arch=arch, weights=weights, out=str(work / "prof"),
                                                 seed=seed))
    select.run(select.Config(profile=str(work / "prof"), strategy="entropy", out=str(work / "sel")))

    def train_and_register(name: str, data: Path, **recipe) -> dict:
        model, ev = work / name, work / f"{name}-eval"
        timed(f"finetune {name}", finetune.run, finetune.Config(
            dataset=str(data), selection=str(work / "sel"), out=str(model), epochs=epochs, **recipe))
        evaluate.run(evaluate.Config(model=str(model), dataset=str(data), out=str(ev), seed=seed))
        summary = timed(f"register {name}", register.run, register.Config(
            model=str(model), eval=str(ev), dataset=str(data), model_name=MODEL, run_name=name))
        print(json.dumps({"model": name, "promoted": summary["promoted"], "reason": summary["reason"]}), flush=True)
        return {"model": name, "recipe": recipe, **{k: summary[k] for k in (
            "version", "value", "champion_before", "promoted", "reason", "comparison", "drift")}}

    decisions = [
        train_and_register("week1-good", ds1, seed=seed),
        train_and_register("week2-broken-lr1e-7", ds2, seed=seed, lr=1e-7),
        train_and_register("week2-good-seed1", ds2, seed=seed + 1),
        train_and_register("week2-good-seed2", ds2, seed=seed + 2),
    ]
    settings = {"archive": archive.name, "arch": arch, "image_size": image_size, "epochs": epochs,
                "per_class": per_class or "all", "seed": seed, "selection": "entropy below-mean (week 1 profile)",
                "gate": "macro_f1, min delta 0.005, alpha 0.05 (defaults)"}
    return {"settings": settings, "splits": splits, "decisions": decisions, "seconds": timings}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["# Two weeks of scheduled retraining", "", f"Command: `{result.get('command', 'benchmarks/retrain.py')}`",
             "",
             f"`benchmarks/retrain.py`: {s['archive']} with Training/ and Testing/ merged into one bucket (so ingest "
             f"draws the test split), week 2 = {s['per_class']} files a class, week 1 = every other file of it; "
             f"{s['arch']}, {s['image_size']} px, {s['epochs']} epoch(s), seed {s['seed']}, {s['selection']}; gate "
             f"{s['gate']}.", "", "## Do week-1 images keep their split?", "",
             "| week 2 ingested | week-1 images | found in week 2 | changed split | week-1 train/val now in test |",
             "|---|---:|---:|---:|---:|"]
    for how, c in result["splits"].items():
        lines.append(f"| {how} | {c['week1_images']:,} | {c['in_week2']:,} | {c['moved']:,} | "
                     f"{c['train_val_now_test']:,} |")
    lines += ["", "Week-1 images are matched by file (the path in the archive), not by pixels: copies share their "
              "pixels. (Before issue 26 this table matched by pixels, so it counted 3,399 images for week 1's "
              "3,510 files.)"]
    if "kaggle_layout" in result:
        lines += ["", "## The Kaggle layout kept: do week-1 files keep their split?", "",
                  "Week 1 = every other JPEG of the archive (sorted names, Training/ and Testing/ both) in the "
                  "archive's own layout, week 2 = the archive: Testing/ fixes the test split, and some scans are "
                  "in both folders, so week 1 holds copies of one image in train or val and in test at once.", "",
                  "| image size | week 2 ingested | week-1 files | found in week 2 | changed split | "
                  "week-1 train/val now in test |", "|---|---|---:|---:|---:|---:|"]
        for size, runs in result["kaggle_layout"].items():
            for how, c in runs.items():
                lines.append(f"| {size} | {how} | {c['week1_images']:,} | {c['in_week2']:,} | {c['moved']:,} | "
                             f"{c['train_val_now_test']:,} |")
        lines += ["", "Before issue 26, `--extends` found old images by their pixels alone, so a Training/ copy "
                  "could take the split its Testing/ twin was recorded with. This same scenario on that code "
                  "(88a2efd): 66 of the 3,509 week-1 files changed split with `--extends`, every one from train or "
                  "val into test, at 32 px and at 224 px alike (the issue counted 68 of 3,510). It now finds each "
                  "old image by its pixels and its place in the source, and a new Training/ copy of an old "
                  "Testing/ image stays in train or val."]
    lines += ["", "## Gate decisions, in order", "",
              "| model | version | champion before | on its own test | head to head (candidate vs champion) | "
              "delta [95% CI] | p (better) | promoted | reason |", "|---|---:|---:|---:|---|---|---:|---|---|"]
    for d in result["decisions"]:
        c = (d["comparison"] or {}).get("0")
        evidence = ([f"{c['candidate']:.3f} vs {c['champion']:.3f} on {c['images']}",
                     f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]", f"{c['p_better']:.3g}"]
                    if c else ["n/a"] * 3)
        before = f"v{d['champion_before']}" if d["champion_before"] else "none"
        cells = [d["model"], f"v{d['version']}", before, f"{d['value']:.3f}", *evidence,
                 "yes" if d["promoted"] else "no", d["reason"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Drift against the champion's training data", "",
              "| model | domain AUC | p | class-mix TV | mean-intensity KS | drift |", "|---|---:|---:|---:|---:|---|"]
    for d in result["decisions"]:
        r = d["drift"]
        if r is None:
            continue
        if "unavailable" in r:
            lines.append(f"| {d['model']} | n/a | | | | {r['unavailable']} |")
            continue
        f, it = r["features"] or {}, r["intensity"] or {}
        scores = [f"{f['domain_auc']:.3f}", f"{f['p_value']:.3g}"] if f else ["no new images", ""]
        cells = [d["model"], *scores, f"{r['class_balance']['total_variation']:.3f}",
                 f"{it['mean_ks']:.3f}" if it else "", "yes" if r["drift"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Seconds", "", "| step | s |", "|---|---:|"]
    lines += [f"| {k} | {v:g} |" for k, v in result["seconds"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_KAGGLE_ZIP", SHARED / "data" / "brain-tumor-mri-kaggle.zip")))
    p.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("ENTROPY_FT_WEIGHTS_DIR",
                                                                          SHARED / "weights")))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--per-class", type=int, default=0, help="files a class in week 2 (0: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrain")
    args = p.parse_args()
    work = ROOT / "benchmarks" / ".cache" / "retrain"
    shutil.rmtree(work, ignore_errors=True)
    os.environ.setdefault("ENTROPY_FT_HOME", str(work))  # the embedded MLflow store, thrown away with the work
    kaggle = kaggle_layout_stability(args.archive, work, (32, 224))
    result = story(args.archive, args.weights_dir, work, arch=args.arch, image_size=args.image_size,
                   epochs=args.epochs, per_class=args.per_class)
    result["kaggle_layout"] = kaggle
    result["command"] = shlex.join(["benchmarks/retrain.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

"""Which selection rule earns the default: every rule against full fine-tuning and against random layers
with the same trainable-parameter count, over seeds and over the same test images.

    .venv/bin/python benchmarks/rule_sweep.py            # resnet18, paper.py --cpu's settings, 3 seeds
    .venv/bin/python benchmarks/rule_sweep.py --plan     # the runs, in order, and which are done

Settings are ``benchmarks/paper.py --cpu``'s (128 px, up to 12 epochs with early stopping, the
library's default training noise, so noise-robust training is on), and the runs share nothing with
that grid: they go under ``--cache``/rule-sweep-runs.

Per seed, in this order, so that an interrupted sweep has every rule at the first seed before it
has any at the second:
- ``full``, then the paper's ``below-mean`` and a ``random`` draw matched to it;
- per budget F (``--budgets``, 0.9 first): ``budget:F`` (fill the lowest-entropy layers up to F
  of the backbone), ``stage-budget:F`` (the same within each ResNet stage) and a random draw
  matched to each;
- ``stage-below-mean`` (below the mean of the layer's own stage) and its random match.

Two configurations that select the same layers (``stage-budget:0.9`` and ``:0.75`` can) share one
run per seed, and the results say so (``same_run_as``). Every entropy selection comes from seed 0's
profile (as in paper.py's grid); a seed fixes a run's new head, data order, augmentation and noise,
and random's draw. A random selection matches its rule's trainable parameters on this seed
(``select --strategy random --budget-from``: within 0.5% of the backbone, and never the rule's
own layer set where another fits).

Evidence per rule, clean accuracy on the 1,311 test images, against full and against its random match:
- over seeds: the mean paired difference, its 95% t interval and the two-sided paired t-test
  (``scipy.stats.ttest_1samp`` on the differences, which is ``ttest_rel``);
- over images: every seed's predictions on the same images, the exact McNemar test on the pooled
  discordant (seed, image) pairs and a paired bootstrap CI of the difference
  (:func:`entropy_ft.evaluation.paired.compare_paired`); per seed too, in the JSON.

The default the evidence supports is the configuration with the fewest trainable parameters whose
accuracy is not significantly below full's by either test (one-sided p >= 0.05), among full and the
configurations with every seed done that run on every architecture (so not a stage rule), random layers
included: the entropy criterion has to earn the default against them. The report also says, rule by rule,
whether entropy is ahead of, behind or level with random at the same trainable parameters.

Resumable like paper.py: a run whose result exists is skipped (on a fresh machine, the committed
``<name>.json``'s runs made with the same settings are put back first) and one cut short resumes from its last
epoch checkpoint. ``<name>.md``, ``<name>.json`` (per-image predictions included) and the plot are
rewritten after every run, so the committed results grow run by run. Never run in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import paper
import provenance

from entropy_ft.selection.rules import DEFAULT_RULE, DEFAULT_STRATEGY, PAPER_RULE, parse_rule

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet34"),
                   help="a ResNet: the stage rules need stages")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--budgets", default="0.9,0.75,0.5,0.25", metavar="F,F,...", help="budget shares, in run order")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="rule-sweep", help="results file stem")
    p.add_argument("--first", default="", metavar="CONFIG,CONFIG,...",
                   help="configurations to run at every seed before the rest, e.g. 'full,entropy below-mean'")
    p.add_argument("--plan", action="store_true", help="print the runs in order, marking those done, and exit")
    args = p.parse_args(argv)
    try:
        args.budgets = [float(f) for f in args.budgets.split(",") if f.strip()]
    except ValueError:
        p.error(f"--budgets {args.budgets!r}: expected shares such as 0.9,0.5")
    if any(not 0 < f <= 1 for f in args.budgets) or args.seeds < 1:
        p.error("--budgets: each share in (0, 1]; --seeds: at least 1")
    args.first = [c.strip() for c in args.first.split(",") if c.strip()]
    known = {config_name(j) for j in job_list(argparse.Namespace(budgets=args.budgets, seeds=1, first=[]))}
    if unknown := [c for c in args.first if c not in known]:
        p.error(f"--first {unknown[0]!r}: not a configuration of this sweep; expected one of {sorted(known)}")
    # every setting that decides a run is paper.py --cpu's, hashed into the run folder the same way
    base = paper.parse_args(["--cpu", "--archs", args.arch, "--seeds", str(args.seeds), "--budgets", "",
                             "--cache", str(args.cache)])
    for key, value in vars(base).items():
        if key not in ("seeds", "budgets", "cache", "results", "name"):
            setattr(args, key, value)
    return args


def rules(budgets: list[float]) -> list[str]:
    """The entropy rules of the sweep, in run order."""
    return (["below-mean"] + [f"{kind}:{f:g}" for f in budgets for kind in ("budget", "stage-budget")]
            + ["stage-below-mean"])


def job_list(args) -> list[dict]:
    """Seed-major: every configuration at seed 0, then at seed 1, ...; the ``--first`` configurations
    before all the others, seed by seed in the order given, so that the runs a decision needs come first."""
    configs = [("full", None)] + [(st, r) for r in rules(args.budgets) for st in ("entropy", "random")]
    jobs = [{"strategy": st, "rule": r, "seed": s} for s in range(args.seeds) for st, r in configs]

    def first(job: dict) -> tuple:
        name = config_name(job)
        return (0, job["seed"], args.first.index(name)) if name in args.first else (1,)
    return sorted(jobs, key=first)  # stable: the rest stay seed-major


def config_name(job: dict) -> str:
    """``full``, ``entropy budget:0.9``, ``random budget:0.9``: a configuration, over its seeds."""
    return job["strategy"] if job["rule"] is None else f"{job['strategy']} {job['rule']}"


def file_name(job: dict) -> str:
    return config_name(job).replace(" ", "-").replace(":", "") + f"-s{job['seed']}"


def select_for(args, job: dict, work: Path, profile_dir: Path) -> str:
    """The selection.json of one job (entropy's is shared by the seeds; random's is drawn per seed)."""
    from entropy_ft.steps import select

    entropy_dir = work / f"select-entropy-{job['rule']}".replace(":", "")
    if job["strategy"] == "full":
        out = work / "select-full"
        if not (out / "selection.json").is_file():
            select.run(select.Config(profile=str(profile_dir), strategy="full", out=str(out)))
        return str(out / "selection.json")
    if not (entropy_dir / "selection.json").is_file():
        select.run(select.Config(profile=str(profile_dir), strategy="entropy", rule=job["rule"], out=str(entropy_dir)))
    if job["strategy"] == "entropy":
        return str(entropy_dir / "selection.json")
    out = work / (f"select-random-{job['rule']}-s{job['seed']}".replace(":", ""))
    if not (out / "selection.json").is_file():
        select.run(select.Config(profile=str(profile_dir), strategy="random", seed=job["seed"],
                                 budget_from=str(entropy_dir), out=str(out)))
    return str(out / "selection.json")


# ---------------------------------------------------------------- evidence


def over_seeds(a: list[dict], b: list[dict]) -> dict:
    """``a`` minus ``b`` in clean accuracy, paired by seed: mean, 95% t interval, two-sided paired t-test."""
    from scipy import stats

    diffs = [x["test"]["shipped"][0]["accuracy"] - y["test"]["shipped"][0]["accuracy"] for x, y in zip(a, b)]
    out = {"seeds": len(diffs), "difference": statistics.mean(diffs), "ci": None, "p": None, "p_worse": None}
    if len(diffs) > 1 and statistics.stdev(diffs) > 1e-9:  # accuracies are multiples of 1/n
        test = stats.ttest_1samp(diffs, 0.0)
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        out.update(ci=[out["difference"] - half, out["difference"] + half], p=float(test.pvalue),
                   p_worse=float(stats.ttest_1samp(diffs, 0.0, alternative="less").pvalue))
    return out


def over_images(a: list[dict], b: list[dict]) -> dict:
    """``a`` against ``b`` on the same test images, every seed's pairs pooled: exact McNemar, paired bootstrap CI;
    and the same per seed."""
    from entropy_ft.evaluation.paired import compare_paired

    def stacked(runs: list[dict], key: str) -> np.ndarray:
        return np.concatenate([r["test_labels"] if key == "labels" else r["test_predictions"]["0"] for r in runs])

    y, pa, pb = stacked(a, "labels"), stacked(a, "predictions"), stacked(b, "predictions")
    classes = int(y.max()) + 1
    pooled = compare_paired(y, pa, pb, classes, "accuracy", resamples=1000)
    right_a, right_b = pa == y, pb == y
    per_seed = [compare_paired(np.asarray(x["test_labels"]), np.asarray(x["test_predictions"]["0"]),
                               np.asarray(z["test_predictions"]["0"]), classes, "accuracy", resamples=1000)
                for x, z in zip(a, b)]
    return {"pairs": pooled.images, "difference": pooled.delta, "ci": [pooled.ci_low, pooled.ci_high],
            "only_a_right": int(np.sum(right_a & ~right_b)), "only_b_right": int(np.sum(~right_a & right_b)),
            "p": min(1.0, 2 * min(pooled.p_better, pooled.p_worse)), "p_worse": pooled.p_worse,
            "per_seed": [{"seed": x["seed"], "difference": c.delta, "p_worse": c.p_worse, "p_better": c.p_better}
                         for x, c in zip(a, per_seed)]}


def summarize(results: list[dict], seeds: int) -> list[dict]:
    """One row per configuration: its cost and accuracy over seeds, and its paired evidence against full
    and against its random match, on the seeds both have."""
    by: dict[str, dict[int, dict]] = {}
    for r in results:
        by.setdefault(r["config"], {})[r["seed"]] = r
    rows = []
    for name, runs in by.items():
        done = [runs[s] for s in sorted(runs)]
        accs = [r["test"]["shipped"][0]["accuracy"] for r in done]
        row = {"config": name, "strategy": done[0]["strategy"], "rule": done[0]["rule"], "seeds": sorted(runs),
               "complete": len(runs) == seeds,
               "selected_layers": paper.mean_std([r["selected_layers"] for r in done]),
               "trainable_params": paper.mean_std([r["trainable_params"] for r in done]),
               "reduction_vs_full": paper.mean_std([r["reduction_vs_full"] for r in done]),
               "accuracy": paper.mean_std(accs),
               "accuracy_dedup": paper.mean_std([r["test"]["dedup"][0]["accuracy"] for r in done]),
               "accuracy_sigma_0.2": paper.mean_std([_at(r, 0.2) for r in done]),
               "accuracy_sigma_0.4": paper.mean_std([_at(r, 0.4) for r in done]),
               "epochs_run": paper.mean_std([r["epochs_run"] for r in done])}
        others = {"full": "full"}
        if row["strategy"] == "entropy":
            others["random"] = f"random {row['rule']}"
        for label, other in others.items():
            common = sorted(set(runs) & set(by.get(other, {})))
            if common and other != name:
                a, b = [runs[s] for s in common], [by[other][s] for s in common]
                row[f"vs_{label}"] = {"seeds": over_seeds(a, b), "images": over_images(a, b)}
        rows.append(row)
    return rows


def _at(run: dict, sigma: float) -> float:
    return next(t["accuracy"] for t in run["test"]["shipped"] if abs(t["sigma"] - sigma) < 1e-9)


def holds(row: dict) -> bool:
    """Whether a complete configuration's accuracy is not significantly below full's over seeds nor over
    images (one-sided p >= ALPHA; full itself holds). Where every seed differs alike, t is undefined; a loss
    on every seed then counts as significant, a tie or a gain does not."""
    if row["config"] == "full":
        return True
    vs = row.get("vs_full")
    return row["complete"] and vs is not None and all(
        (vs[k]["p_worse"] is None and vs[k]["difference"] >= 0)
        or (vs[k]["p_worse"] is not None and vs[k]["p_worse"] >= ALPHA) for k in ("seeds", "images"))


def default_choice(rows: list[dict], stages: bool = False) -> dict | None:
    """The default the evidence supports: of full and every configuration that runs on every architecture
    (a stage rule cannot be SqueezeNet's default), random layers included, the fewest trainable parameters
    that hold. ``stages=True`` admits the stage rules too: the choice for a ResNet alone."""
    ok = [r for r in rows if r["complete"] and holds(r)
          and (stages or r["rule"] is None or not parse_rule(r["rule"]).needs_stages)]
    return min(ok, key=lambda r: r["trainable_params"][0]) if ok else None


def against_random(rows: list[dict]) -> dict[str, list[str]]:
    """Each complete entropy rule against its random match, by the pooled McNemar test over the same images
    (the more powerful of the two; the seed test is in the table): ``ahead``, ``behind`` or ``level``
    (two-sided p >= ALPHA)."""
    verdict: dict[str, list[str]] = {"ahead": [], "behind": [], "level": []}
    for r in rows:
        if r["strategy"] == "entropy" and r["complete"] and "vs_random" in r:
            i = r["vs_random"]["images"]
            verdict["level" if i["p"] >= ALPHA else "ahead" if i["difference"] > 0 else "behind"].append(r["config"])
    return verdict


def breadth(results: list[dict]) -> dict:
    """What tracks accuracy across the runs: how many conv layers were trained or how many parameters.

    Over every run (a run two configurations share counted once), the Spearman correlation of clean accuracy
    with each; and, for each entropy run and its random match on the same seed (the same parameter count by
    construction), whether the one that trained more layers was the more accurate: if breadth matters at a
    fixed parameter count, it is."""
    from scipy import stats

    runs = [r for r in results if "same_run_as" not in r]
    acc = [r["test"]["shipped"][0]["accuracy"] for r in runs]
    by = {(r["config"], r["seed"]): r for r in runs}
    more_layers = {"ahead": 0, "behind": 0, "tied": 0}
    for r in runs:
        match = by.get((f"random {r['rule']}", r["seed"])) if r["strategy"] == "entropy" else None
        if match is None or match["selected_layers"] == r["selected_layers"]:
            continue
        wide, narrow = sorted((r, match), key=lambda x: -x["selected_layers"])
        gap = wide["test"]["shipped"][0]["accuracy"] - narrow["test"]["shipped"][0]["accuracy"]
        more_layers["ahead" if gap > 0 else "behind" if gap < 0 else "tied"] += 1
    decided = more_layers["ahead"] + more_layers["behind"]
    return {"runs": len(runs),
            "spearman_layers": float(stats.spearmanr([r["selected_layers"] for r in runs], acc).statistic),
            "spearman_params": float(stats.spearmanr([r["trainable_params"] for r in runs], acc).statistic),
            "more_layers_at_the_same_params": more_layers,
            "sign_test_p": float(stats.binomtest(more_layers["ahead"], decided).pvalue) if decided else None}


# ---------------------------------------------------------------- report


def _pp(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}"


def _p(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def _evidence(vs: dict | None) -> str:
    if vs is None:
        return "| | | | "
    s, i = vs["seeds"], vs["images"]
    ci = f" [{_pp(s['ci'][0])}, {_pp(s['ci'][1])}]" if s["ci"] else ""
    return (f"| {_pp(s['difference'])}{ci} | {_p(s['p'])} | {_pp(i['difference'])} [{_pp(i['ci'][0])}, "
            f"{_pp(i['ci'][1])}] ({i['only_a_right']}/{i['only_b_right']}) | {_p(i['p'])} ")


def markdown(meta: dict, rows: list[dict], choice: dict | None, on_resnets: dict | None = None,
             spread: dict | None = None) -> str:
    """The report; ``on_resnets`` is ``default_choice(rows, stages=True)``, ``spread`` is :func:`breadth`'s."""
    s, m = meta["settings"], meta["machine"]
    lines = [
        f"# Selection rules against full fine-tuning and random layers ({meta['name']})", "",
        "Generated by `benchmarks/rule_sweep.py`; do not edit by hand.", "",
        f"- Command: `{meta['command']}`",
        f"- This invocation started {meta['started']}, report written {meta['finished']}; **{meta['runs_done']} of "
        f"{meta['runs_planned']} runs done** (the sweep resumes where it stopped)",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        + (f"GPU {m['gpu']}" if m.get("gpu") else "no GPU") + f"; Python {m['python']}, torch {m['torch']}, "
        f"torchvision {m['torchvision']}",
        f"- Settings (benchmarks/paper.py --cpu): {meta['arch']}, {s['image_size']} px, up to {s['epochs']} epochs "
        f"(early stopping on val macro-F1, patience {s['patience']}), batch {s['batch_size']}, AdamW lr {s['lr']}, "
        f"training noise sigma ~ U(0, {s['train_noise']['sigma_max']:g}) on {100 * s['train_noise']['p']:g}% of "
        f"the training images, {s['profile_images']} profiling images (seed 0's profile for every rule), "
        f"weights {s['weights'][meta['arch']]} (Imagenette stands in for ImageNet)",
        f"- Test set: {meta['test_images']} images, every run scored on the same ones.", "",
        "Accuracy: clean test accuracy, mean ± std over the seeds done. Differences in percentage points, paired: "
        "**over seeds**, the mean difference on the same seed with its 95% t interval and the two-sided paired "
        "t-test; **over images**, every seed's predictions on the same test images pooled, the difference with its "
        "paired bootstrap 95% CI, (images only this one gets right / only the other), and the two-sided exact "
        "McNemar test. A random row is matched on this seed to its rule's trainable parameters.", "",
        "## Every configuration", "",
        "| configuration | seeds | conv layers | trainable params | reduction vs full | accuracy | accuracy (dedup) "
        "| σ=0.2 | σ=0.4 | − full, seeds | p | − full, images | p | − random, seeds | p | − random, images | p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {len(r['seeds'])} | {paper.fmt(r['selected_layers'], digits=0)} "
            f"| {paper.fmt(r['trainable_params'], digits=0)} | {paper.fmt(r['reduction_vs_full'], 100, 1)}% "
            f"| {paper.fmt(r['accuracy'])} | {paper.fmt(r['accuracy_dedup'])} | {paper.fmt(r['accuracy_sigma_0.2'])} "
            f"| {paper.fmt(r['accuracy_sigma_0.4'])} " + _evidence(r.get("vs_full")) + _evidence(r.get("vs_random"))
            + "|")
    lines += ["", "## The default the evidence supports", ""]
    if choice is None:
        lines.append("No configuration has every seed done yet, or none but full holds; no default is chosen yet.")
    else:
        lines.append(f"**{choice['config']}**: {100 * choice['reduction_vs_full'][0]:.1f}% fewer trainable "
                     f"parameters than full fine-tuning, accuracy {paper.fmt(choice['accuracy'])}, the fewest "
                     "parameters among full and the configurations that run on every architecture (random layers "
                     "included), with every seed done, whose accuracy is not significantly below full's (one-sided "
                     f"p >= {ALPHA} over seeds and over images).")
        if on_resnets is not None and on_resnets is not choice:
            lines += ["", f"With the stage rules admitted, which need a ResNet's stages: **{on_resnets['config']}**, "
                      f"{100 * on_resnets['reduction_vs_full'][0]:.1f}% fewer, accuracy "
                      f"{paper.fmt(on_resnets['accuracy'])}."]
        lines += ["", f"The cheapest of {len(rows)} configurations that is not significantly below full is chosen, "
                  "so a configuration can be chosen for a lucky draw: read its seeds' spread and its CI beside it."]
    verdict = against_random(rows)
    if any(verdict.values()):
        lines += ["", "## Entropy against random at the same trainable parameters", "",
                  "Rules with every seed done, by the McNemar test over the same images (two-sided p < "
                  f"{ALPHA}): entropy significantly **ahead** of random in {len(verdict['ahead'])} "
                  f"({', '.join(verdict['ahead']) or 'none'}), significantly **behind** in {len(verdict['behind'])} "
                  f"({', '.join(verdict['behind']) or 'none'}), level in {len(verdict['level'])} "
                  f"({', '.join(verdict['level']) or 'none'})."]
    if spread and spread["runs"] > 2:
        m = spread["more_layers_at_the_same_params"]
        lines += ["", "## Layers or parameters: what tracks accuracy", "",
                  f"Over the {spread['runs']} runs (a shared run once), clean accuracy's Spearman correlation with the "
                  f"number of conv layers trained is {spread['spearman_layers']:+.2f}, with the trainable parameters "
                  f"{spread['spearman_params']:+.2f}. Of the entropy runs and their random matches on the same seed "
                  "(the same parameters) that trained different numbers of layers, the one with more layers was "
                  f"ahead in {m['ahead']}, behind in {m['behind']} and level in {m['tied']}"
                  + (f" (two-sided sign test p = {_p(spread['sign_test_p'])})." if spread["sign_test_p"] is not None
                     else ".")]
    lines += ["", f"![accuracy against trainable parameters]({meta['name']}.png)", ""]
    return "\n".join(lines)


def write_plot(path: Path, rows: list[dict], choice: dict | None, on_resnets: dict | None, arch: str) -> None:
    """Accuracy against trainable parameters, one marker per configuration (a random match sits at its entropy
    rule's count, so only entropy rules are labelled); full, the product's default, the paper's rule and the
    default the evidence supports marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"full": ("k", "s"), "entropy": ("tab:blue", "o"), "random": ("tab:orange", "^")}
    labels: dict[tuple, list[str]] = {}  # rules that share a run (the same layers) share one label
    for r in rows:
        color, marker = styles[r["strategy"]]
        x, (y, err) = r["trainable_params"][0] / 1e6, r["accuracy"]
        ax.errorbar(x, y, yerr=err or 0, color=color, marker=marker, capsize=3, linestyle="none",
                    mfc="none" if not r["complete"] else color)
        if r["strategy"] != "random":
            labels.setdefault((x, y), []).append(r["rule"] or "full")
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(5, -10), fontsize=7)
    rings = [(f"{DEFAULT_STRATEGY} {DEFAULT_RULE}", "tab:purple", 160, "the product's default"),
             (f"entropy {PAPER_RULE}", "tab:red", 160, "the paper's rule")]
    if choice is not None:
        rings.append((choice["config"], "green", 320, "default by the evidence"))
    if on_resnets is not None and on_resnets is not choice:
        rings.append((on_resnets["config"], "tab:cyan", 320, "the evidence's choice on a ResNet"))
    by = {r["config"]: r for r in rows}
    for config, color, size, what in rings:
        if config in by:
            ax.scatter([by[config]["trainable_params"][0] / 1e6], [by[config]["accuracy"][0]], s=size,
                       facecolors="none", edgecolors=color, linewidths=2, label=f"{what}: {config}")
    for label, (color, marker) in styles.items():
        ax.plot([], [], color=color, marker=marker, linestyle="none", label=label)
    ax.set_xlabel("trainable parameters (millions)")
    ax.set_ylabel("clean test accuracy (mean ± std over seeds)")
    running = " (hollow: seeds still running)" if not all(r["complete"] for r in rows) else ""
    ax.set_title(f"{arch}: selection rules against full and random{running}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def restore_committed(path: Path, conf: dict, work: Path) -> None:
    """Put the committed results' runs back into an empty cache (a fresh machine or clone), so the sweep
    continues from them rather than from the start; only runs made with these very settings."""
    if not path.is_file():
        return
    committed = json.loads(path.read_text())
    if committed.get("settings") != json.loads(json.dumps(conf)):
        return
    for run in committed["runs"]:
        result = work / f"result-{file_name(run)}.json"
        if not result.is_file():
            result.write_text(json.dumps(run) + "\n")
            paper.log(f"restored {config_name(run)} seed {run['seed']} from {path.name}")


def write_report(args: argparse.Namespace, meta: dict, jobs: list[dict], work: Path) -> None:
    """Write the results from every run done so far, in plan order, whichever invocation trained them: a
    sweep that starts with new configurations keeps every finished run in its files from the first write."""
    results = [{**json.loads(path.read_text()), "config": config_name(job), "strategy": job["strategy"],
                "rule": job["rule"]}
               for job in jobs if (path := work / f"result-{file_name(job)}.json").is_file()]
    rows = summarize(results, args.seeds)
    choice, on_resnets, spread = default_choice(rows), default_choice(rows, stages=True), breadth(results)
    meta = {**meta, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "runs_done": len(results), "runs_planned": len(jobs)}
    (args.results / f"{args.name}.json").write_text(json.dumps(
        {"schema_version": 1, **meta, "summary": rows, "default": choice and choice["config"],
         "default_with_stages": on_resnets and on_resnets["config"],
         "entropy_vs_random": against_random(rows), "breadth": spread, "runs": results}) + "\n")
    (args.results / f"{args.name}.md").write_text(markdown(meta, rows, choice, on_resnets, spread))
    write_plot(args.results / f"{args.name}.png", rows, choice, on_resnets, args.arch)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("ENTROPY_FT_NO_PROGRESS", "1")
    conf = paper.settings(args)
    work = paper.arch_dirs(args.cache / "rule-sweep-runs", conf)[args.arch]
    jobs = job_list(args)
    restore_committed(args.results / f"{args.name}.json", conf, work)
    if args.plan:
        for k, job in enumerate(jobs, 1):
            done = (work / f"result-{file_name(job)}.json").is_file()
            print(f"{k:3d}  {'done' if done else '    '}  {config_name(job)}  seed {job['seed']}")
        return
    started = datetime.now(timezone.utc)
    dataset = paper.ensure_dataset(args.archive, args.image_size, args.cache)
    leak = paper.leaked_test_images(dataset)
    profile_dir = work / "profile"
    if not (profile_dir / "profile.json").is_file():
        from entropy_ft.steps import profile

        paper.log(f"{args.arch}: profiling {args.profile_images} training images")
        profile.run(profile.Config(dataset=str(dataset), arch=args.arch, weights=paper.weights_for(args, args.arch),
                                   out=str(profile_dir), images=args.profile_images, device=args.device))
    command = provenance.command("benchmarks/rule_sweep.py", sys.argv[1:] if argv is None else argv)
    args.results.mkdir(parents=True, exist_ok=True)
    meta = {"name": args.name, "command": command, "arch": args.arch, "settings": conf,
            "started": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": provenance.machine(),
            "test_images": leak["test_images"], "alpha": ALPHA}
    write_report(args, meta, jobs, work)  # what is already done, before the first run of minutes
    times: list[float] = []
    trained: dict[tuple, tuple[str, Path]] = {}  # (layers, seed) -> the first configuration that trained them
    for k, job in enumerate(jobs, 1):
        what = f"[{k}/{len(jobs)}] {config_name(job)} seed {job['seed']}"
        result_path = work / f"result-{file_name(job)}.json"
        selection = select_for(args, job, work, profile_dir)
        key = (tuple(json.loads(Path(selection).read_text())["layers"]), job["seed"])
        same = trained.setdefault(key, (config_name(job), result_path))
        new = not result_path.is_file()
        if same[1] != result_path and new:  # the same layers and seed: the same run
            paper.log(f"{what}: the same layers as {same[0]}, whose run it shares")
            result_path.write_text(json.dumps({**json.loads(same[1].read_text()), "same_run_as": same[0]}) + "\n")
        if not result_path.is_file():
            left = sum(not (work / f"result-{file_name(j)}.json").is_file() for j in jobs[k - 1:])
            eta = f", about {statistics.mean(times) * left / 60:.0f} min left for {left} runs" if times else ""
            paper.log(f"{what}: fine-tuning up to {args.epochs} epochs{eta}")
            t0 = time.perf_counter()
            paper.run_isolated({
                "arch": args.arch, "strategy": job["strategy"], "seed": job["seed"], "budget": None,
                "dataset": str(dataset), "selection": selection,
                "model": str(work / f"model-{file_name(job)}"), "rescore": False, "result": str(result_path),
                "train_noise": args.train_noise, "train_noise_p": args.train_noise_p, "epochs": args.epochs,
                "patience": args.patience, "lr": args.lr, "batch_size": args.batch_size, "device": args.device,
                "precision": args.precision, "num_workers": args.num_workers, "sigmas": args.sigmas,
                "keep": leak["keep"].tolist(), "in_process": False})
            times.append(time.perf_counter() - t0)
        result = json.loads(result_path.read_text())
        paper.log(f"{what}: test accuracy {result['test']['shipped'][0]['accuracy']:.4f}, "
                  f"{result['trainable_params']:,} trainable, {result['epochs_run']} epochs")
        if new:  # a run done before this invocation is in the report already
            write_report(args, meta, jobs, work)
    paper.log(f"wrote {args.results / (args.name + '.md')}")


if __name__ == "__main__":
    main()

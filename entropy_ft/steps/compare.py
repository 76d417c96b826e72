"""Put strategies side by side: accuracy, macro-F1, trainable parameters, reduction against
full fine-tuning and accuracy under Gaussian noise, one row per evaluation.

This is the paper's main table, reproduced on the user's own data by the ablation pipeline.
Writes ``comparison.json``, ``comparison.md`` and ``comparison.html`` / ``.png`` into ``--out``.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_ft import plots, storage
from entropy_ft.artifacts import Comparison, Evaluation
from entropy_ft.errors import UserError
from entropy_ft.logs import log
from entropy_ft.options import Options, option
from entropy_ft.reports import md_table
from entropy_ft.selection.rules import STRATEGIES


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    evaluations: tuple[str, ...] = option(flag="EVAL", nargs="+",
                                          help="eval.json files or their folders from `entropy-ft evaluate`")
    out: str = option(help="output directory or s3:// prefix")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.evaluations:
            raise UserError("compare needs at least one eval.json")


def comparison_rows(reports: list[Evaluation]) -> list[dict]:
    """One row per evaluation, ordered entropy, full, head, random, then anything else."""
    rows = [{
        "strategy": r.strategy,
        "arch": r.arch,
        "trainable_params": r.trainable_params,
        "reduction_vs_full": r.reduction_vs_full,
        "accuracy": r.accuracy,
        "macro_f1": r.macro_f1,
        "balanced_accuracy": r.balanced_accuracy,
        "accuracy_by_sigma": {f"{row['sigma']:g}": row["accuracy"] for row in r.noise},
    } for r in reports]
    rank = {s: i for i, s in enumerate(STRATEGIES)}
    return sorted(rows, key=lambda row: (rank.get(row["strategy"], len(rank)), row["strategy"] or ""))


def entropy_against_random(rows: list[dict]) -> str | None:
    """One sentence on entropy against random at (about) the same trainable-parameter count, the
    comparison that says whether the entropy criterion chose better than chance; None unless both ran.
    One run each: a difference of a point or two is within seed-to-seed spread (benchmarks/rule_sweep.py
    measures it over seeds and images)."""
    by = {row["strategy"]: row for row in rows}
    if "entropy" not in by or "random" not in by:
        return None
    e, r = by["entropy"], by["random"]
    delta = 100 * (e["accuracy"] - r["accuracy"])
    verdict = "ahead of" if delta > 0 else "behind" if delta < 0 else "level with"
    return (f"Entropy against random layers with the same parameter budget: entropy trains {e['trainable_params']:,} "
            f"parameters and random {r['trainable_params']:,}; entropy is {verdict} random by {abs(delta):.1f} "
            f"accuracy points (macro-F1 {100 * (e['macro_f1'] - r['macro_f1']):+.1f}). One run each: differences of "
            "a point or two are within what a different seed gives.")


def _fmt(value: object, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if pct:
        return f"{100 * float(value):.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.4f}"


def run(cfg: Config) -> dict:
    reports = [Evaluation.read(uri) for uri in cfg.evaluations]
    rows = comparison_rows(reports)
    sigmas = sorted({s for row in rows for s in row["accuracy_by_sigma"]}, key=float)
    header = ["strategy", "trainable params", "reduction vs full", "accuracy", "macro-F1", "balanced acc.",
              *(f"acc. sigma {s}" for s in sigmas)]
    table = [[row["strategy"], _fmt(row["trainable_params"]), _fmt(row["reduction_vs_full"], pct=True),
              _fmt(row["accuracy"]), _fmt(row["macro_f1"]), _fmt(row["balanced_accuracy"]),
              *(_fmt(row["accuracy_by_sigma"].get(s)) for s in sigmas)] for row in rows]
    fig = plots.line_figure(
        [float(s) for s in sigmas],
        {row["strategy"]: [row["accuracy_by_sigma"].get(s, float("nan")) for s in sigmas] for row in rows},
        title="Test accuracy under Gaussian input noise", xlabel="noise sigma (pixels in [0, 1])", ylabel="accuracy",
    )
    against = entropy_against_random(rows)
    with storage.output_dir(cfg.out) as tmp:
        Comparison(rows=rows, evaluations=list(cfg.evaluations)).write(str(tmp))
        (tmp / "comparison.md").write_text("# Strategy comparison\n\n" + md_table(header, table)
                                           + (f"\n{against}\n" if against else ""))
        plots.write_report(tmp, "comparison", "Strategy comparison", fig, table=(header, table),
                           notes=[against] if against else [])
    for line in md_table(header, table).splitlines():
        log.info("%s", line)
    if against:
        log.info("%s", against)
    best = max(rows, key=lambda row: row["macro_f1"])
    return {"out": cfg.out, "comparison": Comparison.file_in(cfg.out), "strategies": [r["strategy"] for r in rows],
            "best_macro_f1_strategy": best["strategy"], "best_macro_f1": best["macro_f1"]}

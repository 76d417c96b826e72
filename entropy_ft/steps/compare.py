"""Put strategies side by side: accuracy, macro-F1, trainable parameters, reduction against
full fine-tuning and accuracy under Gaussian noise, one row per evaluation.

This is the paper's main table, reproduced on the user's own data by the ablation pipeline.
Writes ``comparison.json``, ``comparison.md`` and ``comparison.html`` / ``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import SCHEMA_VERSION, plots, storage
from ..errors import UserError
from ..logs import log
from ..reports import md_table

COMPARISON_FILE = "comparison.json"
STRATEGY_ORDER = ("entropy", "full", "head", "random")


@dataclass(frozen=True)
class Config:
    evaluations: tuple[str, ...]  # eval.json files (or directories holding one)
    out: str

    def __post_init__(self) -> None:
        if not self.evaluations:
            raise UserError("compare needs at least one eval.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("evaluations", nargs="+", metavar="EVAL", help="eval.json files or directories from `entropy-ft evaluate`")
    p.add_argument("--out", required=True, help="output directory or s3:// prefix")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(tuple(args.evaluations), args.out)


def _read(uri: str) -> dict:
    if not uri.endswith(".json"):
        uri = storage.join(uri, "eval.json")
    report = storage.read_json(uri)
    for key in ("accuracy", "macro_f1", "noise", "strategy"):
        if key not in report:
            raise UserError(f"{uri}: not an eval.json from `entropy-ft evaluate` (no {key!r})")
    return report


def comparison_rows(reports: list[dict]) -> list[dict]:
    """One row per evaluation, ordered entropy, full, head, random, then anything else."""
    rows = []
    for r in reports:
        rows.append({
            "strategy": r["strategy"],
            "arch": r.get("arch"),
            "trainable_params": r.get("trainable_params"),
            "reduction_vs_full": r.get("reduction_vs_full"),
            "accuracy": r["accuracy"],
            "macro_f1": r["macro_f1"],
            "balanced_accuracy": r.get("balanced_accuracy"),
            "accuracy_by_sigma": {f"{row['sigma']:g}": row["accuracy"] for row in r["noise"]},
        })
    rank = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    return sorted(rows, key=lambda row: (rank.get(row["strategy"], len(rank)), row["strategy"] or ""))


def _fmt(value: object, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if pct:
        return f"{100 * float(value):.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.4f}"


def run(cfg: Config) -> dict:
    reports = [_read(uri) for uri in cfg.evaluations]
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
    with storage.output_dir(cfg.out) as tmp:
        storage.write_json(str(tmp / COMPARISON_FILE), {"schema_version": SCHEMA_VERSION, "rows": rows,
                                                         "evaluations": list(cfg.evaluations)})
        (tmp / "comparison.md").write_text("# Strategy comparison\n\n" + md_table(header, table))
        plots.write_report(tmp, "comparison", "Strategy comparison", fig, table=(header, table))
    for line in md_table(header, table).splitlines():
        log.info("%s", line)
    best = max(rows, key=lambda row: row["macro_f1"])
    return {"out": cfg.out, "comparison": storage.join(cfg.out, COMPARISON_FILE), "strategies": [r["strategy"] for r in rows],
            "best_macro_f1_strategy": best["strategy"], "best_macro_f1": best["macro_f1"]}

"""Run the training pipeline (or ``--pipeline ablation``) end to end on this machine through kfp.local.

Embedded defaults: artifacts under ``--root`` (default ``./out``), MLflow in a local SQLite
store under the same root unless ``MLFLOW_TRACKING_URI`` points elsewhere. No server needed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..logs import log


@dataclass(frozen=True)
class Config:
    pipeline: str = "training"
    root: str = "out"
    arguments: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..pipelines import PIPELINES

        if self.pipeline not in PIPELINES:
            raise UserError(f"--pipeline {self.pipeline}: expected one of {', '.join(PIPELINES)}")
        if self.root.startswith("s3://"):
            raise UserError(f"--root {self.root}: a local run keeps its artifacts on this machine; give a folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..pipelines.params import add_pipeline_flags

    p.add_argument("--pipeline", default="training", help="training or ablation")
    p.add_argument("--root", default="out", help="folder for artifacts, cache and the local MLflow store")
    add_pipeline_flags(p)


def config_from_args(args: argparse.Namespace) -> Config:
    from ..pipelines.params import arguments_from_args

    return Config(args.pipeline, args.root, arguments_from_args(args, args.pipeline))


def absolute_paths(arguments: dict) -> dict:
    """Local data and weight paths made absolute: components may run in another working directory."""
    def fix(value: str) -> str:
        return str(Path(value).resolve()) if Path(value).exists() else value

    out = dict(arguments)
    if "data" in out:
        out["data"] = ",".join(fix(s.strip()) for s in str(out["data"]).split(",") if s.strip())
    if "weights" in out:
        out["weights"] = fix(str(out["weights"]))
    return out


def run(cfg: Config) -> dict:
    from .. import tracking
    from ..pipelines.local import run_local

    arguments = absolute_paths(cfg.arguments)
    log.info("running the %s pipeline locally with %s", cfg.pipeline, json.dumps(arguments))
    result = run_local(cfg.pipeline, arguments, Path(cfg.root))
    uri = tracking.tracking_uri()
    for name, path in result["outputs"].items():
        log.info("%-12s %s", name, path)
    reports = [str(p) for p in sorted(Path(result["run_dir"]).rglob("*.html"))]
    log.info("reports: %s", ", ".join(reports))
    summary = {**result, "reports": reports, "mlflow_tracking_uri": tracking.redact(uri)}
    if cfg.pipeline == "training":
        ui = f"mlflow ui --backend-store-uri {uri} --port 5000" if uri.startswith("sqlite:") else f"open {uri}"
        summary["mlflow_ui"] = ui
        log.info("MLflow: %s  (then open http://127.0.0.1:5000)", ui)
    return summary

"""Create a recurring run (cron) of a pipeline on a KFP endpoint: recurring retraining.

At most one run at a time (``max_concurrency=1``) and no backfill of missed intervals
(``no_catchup``); the registry gate keeps a worse model from becoming champion.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..cron import normalize_cron
from ..errors import UserError
from ..logs import log
from .submit import add_common, common_from_args, upload


@dataclass(frozen=True)
class Config:
    cron: str
    pipeline: str = "training"
    host: str | None = None
    token: str | None = None
    experiment: str = "entropy-ft"
    job_name: str = ""
    pipeline_name: str = ""
    arguments: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..pipelines import PIPELINES

        if self.pipeline not in PIPELINES:
            raise UserError(f"--pipeline {self.pipeline}: expected one of {', '.join(PIPELINES)}")
        object.__setattr__(self, "cron", normalize_cron(self.cron))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cron", required=True,
                   help="six fields with seconds, e.g. '0 0 2 * * 1' for Mondays 02:00 (5-field Unix cron gets 0 s)")
    p.add_argument("--job-name", default="", help="name of the recurring run (default: entropy-ft-<pipeline>-schedule)")
    add_common(p)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(cron=args.cron, job_name=args.job_name, **common_from_args(args))


def run(cfg: Config) -> dict:
    from ..pipelines import remote

    client, name, pipeline_id, version_id = upload(cfg)
    job_name = cfg.job_name or f"{name}-schedule"
    job_id = remote.schedule_run(client, cfg.experiment, job_name, cfg.cron, pipeline_id, version_id, cfg.arguments)
    log.info("recurring run %s (%s): cron '%s', one at a time, no catch-up", job_name, job_id, cfg.cron)
    return {"recurring_run_id": job_id, "job_name": job_name, "cron": cfg.cron, "pipeline_id": pipeline_id,
            "version_id": version_id, "experiment": cfg.experiment, "max_concurrency": 1, "no_catchup": True}

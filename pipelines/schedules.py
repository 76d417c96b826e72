"""List the recurring runs of an experiment on a KFP endpoint: name, id, cron, status, pipeline version."""

from __future__ import annotations

from dataclasses import dataclass

from entropy_ft.logs import log

from .remote import EndpointConfig, experiment_id, recurring_runs


@dataclass(frozen=True, kw_only=True)
class Config(EndpointConfig):
    pass


def run(cfg: Config) -> dict:
    kfp_client = cfg.connect()
    exp = experiment_id(kfp_client, cfg.experiment)
    jobs = recurring_runs(kfp_client, exp) if exp else []
    for job in jobs:
        log.info("%s  %s  cron '%s'  %s", job["name"], job["id"], job["cron"], job["status"] or job["mode"])
    if not jobs:
        log.info("no recurring runs in experiment %s", cfg.experiment)
    return {"experiment": cfg.experiment, "recurring_runs": jobs}

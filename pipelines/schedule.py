"""Create a recurring run (cron) of a pipeline on a KFP endpoint: recurring retraining.

At most one run at a time (``max_concurrency=1``) and no backfill of missed intervals
(``no_catchup``); the registry gate keeps a worse model from becoming champion.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_ft.logs import log
from entropy_ft.options import option

from .cron import normalize_cron
from .remote import RemoteConfig, schedule_run, upload


@dataclass(frozen=True, kw_only=True)
class Config(RemoteConfig):
    cron: str = option(
        help="six fields with seconds, e.g. '0 0 2 * * 1' for Mondays 02:00 (5-field Unix cron gets 0 s)")
    name: str = option("", help="name of the recurring run; one of that name in the experiment is replaced "
                                "(default: entropy-ft-<pipeline>-schedule)")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "cron", normalize_cron(self.cron))


def run(cfg: Config) -> dict:
    client, name, pipeline_id, version_id = upload(cfg)
    job_name = cfg.name or f"{name}-schedule"
    job_id, replaced = schedule_run(client, cfg.experiment, job_name, cfg.cron, pipeline_id, version_id,
                                    cfg.arguments)
    log.info("recurring run %s (%s): cron '%s', one at a time, no catch-up%s", job_name, job_id, cfg.cron,
             f"; replaced {', '.join(replaced)}" if replaced else "")
    return {"recurring_run_id": job_id, "job_name": job_name, "cron": cfg.cron, "pipeline_id": pipeline_id,
            "version_id": version_id, "experiment": cfg.experiment, "max_concurrency": 1, "no_catchup": True,
            "replaced": replaced}

"""Upload the pipeline as a new version to a KFP endpoint and start a run in an experiment.

Endpoint from ``--host`` or ``KF_PIPELINES_ENDPOINT``; token from ``--token``,
``KF_PIPELINES_TOKEN`` or the in-cluster service-account token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from entropy_ft.logs import log
from entropy_ft.options import option

from .remote import RemoteConfig, submit_run, upload


@dataclass(frozen=True, kw_only=True)
class Config(RemoteConfig):
    run_name: str = option("", help="display name of the run (default: pipeline and time)")


def run(cfg: Config) -> dict:
    client, name, pipeline_id, version_id = upload(cfg)
    run_name = cfg.run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_id = submit_run(client, cfg.experiment, run_name, pipeline_id, version_id, cfg.arguments)
    log.info("started run %s (%s) in experiment %s on %s", run_name, run_id, cfg.experiment, cfg.host or "the endpoint")
    return {"run_id": run_id, "run_name": run_name, "pipeline_id": pipeline_id, "version_id": version_id,
            "experiment": cfg.experiment, "pipeline_name": name}

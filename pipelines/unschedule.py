"""Delete the recurring run(s) of a name in an experiment on a KFP endpoint; runs already started go on."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

from entropy_ft.errors import UserError
from entropy_ft.logs import log
from entropy_ft.options import option

from .remote import EndpointConfig, experiment_id, recurring_runs


def _name_problem(name: str) -> str | None:
    return None if name.strip() else "give the name of the recurring run (see `entropy-ft schedules`)"


@dataclass(frozen=True, kw_only=True)
class Config(EndpointConfig):
    name: str = option(check=_name_problem, help="name of the recurring run to delete")


def run(cfg: Config) -> dict:
    kfp_client = cfg.connect()
    exp = experiment_id(kfp_client, cfg.experiment)
    jobs = recurring_runs(kfp_client, exp, cfg.name) if exp else []
    if not jobs:
        raise UserError(f"--name {cfg.name}: no recurring run of that name in experiment {cfg.experiment}")
    with contextlib.redirect_stdout(sys.stderr):
        for job in jobs:
            kfp_client.delete_recurring_run(job["id"])
    log.info("deleted recurring run %s (%s)", cfg.name, ", ".join(job["id"] for job in jobs))
    return {"experiment": cfg.experiment, "name": cfg.name, "deleted": [job["id"] for job in jobs]}

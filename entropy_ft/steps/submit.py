"""Upload the pipeline as a new version to a KFP endpoint and start a run in an experiment.

Endpoint from ``--host`` or ``KF_PIPELINES_ENDPOINT``; token from ``--token``,
``KF_PIPELINES_TOKEN`` or the in-cluster service-account token.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..logs import log
from .compile import add_cluster_flags, cluster_from_args, compile_to


@dataclass(frozen=True)
class Config:
    pipeline: str = "training"
    host: str | None = None
    token: str | None = None
    experiment: str = "entropy-ft"
    run_name: str = ""
    pipeline_name: str = ""  # default: the pipeline's own name
    arguments: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..pipelines import PIPELINES

        if self.pipeline not in PIPELINES:
            raise UserError(f"--pipeline {self.pipeline}: expected one of {', '.join(PIPELINES)}")
        if not self.experiment.strip():
            raise UserError("--experiment must not be empty")


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags shared by submit and schedule."""
    from ..pipelines.params import add_pipeline_flags

    p.add_argument("--pipeline", default="training", help="training or ablation")
    p.add_argument("--host", default=None, help="KFP endpoint URL (default: $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--token", default=None, help="bearer token (default: $KF_PIPELINES_TOKEN or the in-cluster token)")
    p.add_argument("--experiment", default="entropy-ft", help="KFP experiment to run in (created if missing)")
    p.add_argument("--pipeline-name", default="", help="name of the uploaded pipeline (default: entropy-ft-<pipeline>)")
    add_pipeline_flags(p)
    add_cluster_flags(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--run-name", default="", help="display name of the run (default: pipeline and time)")


def common_from_args(args: argparse.Namespace) -> dict:
    from ..pipelines.params import arguments_from_args

    return {"pipeline": args.pipeline, "host": args.host, "token": args.token, "experiment": args.experiment,
            "pipeline_name": args.pipeline_name, "arguments": arguments_from_args(args, args.pipeline),
            "cluster": cluster_from_args(args)}


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(run_name=args.run_name, **common_from_args(args))


def upload(cfg) -> tuple[object, str, str, str]:
    """Compile with the cluster settings and upload as a new pipeline version: (client, name, pipeline id, version id)."""
    from ..pipelines import remote
    from ..pipelines.cluster import ClusterOptions

    endpoint = remote.Endpoint.resolve(cfg.host, cfg.token)
    client = remote.client(endpoint)
    name = cfg.pipeline_name or f"entropy-ft-{cfg.pipeline}"
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(cfg.pipeline, ClusterOptions(**cfg.cluster), Path(tmp, f"{name}.yaml"))
        pipeline_id, version_id = remote.upload_version(client, package, name, remote.version_name(__version__))
    return client, name, pipeline_id, version_id


def run(cfg: Config) -> dict:
    from ..pipelines import remote

    client, name, pipeline_id, version_id = upload(cfg)
    run_name = cfg.run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_id = remote.submit_run(client, cfg.experiment, run_name, pipeline_id, version_id, cfg.arguments)
    log.info("started run %s (%s) in experiment %s on %s", run_name, run_id, cfg.experiment, cfg.host or "the endpoint")
    return {"run_id": run_id, "run_name": run_name, "pipeline_id": pipeline_id, "version_id": version_id,
            "experiment": cfg.experiment, "pipeline_name": name}

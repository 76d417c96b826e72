"""Talk to a KFP endpoint: upload a compiled pipeline as a new version, start a run, or
create a recurring run.

Runs and schedules always reference an uploaded pipeline version (pipeline id and version
id), never an inline spec, so the KFP UI shows which version every run used; kfp 2.17's
``create_recurring_run`` needs both ids anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from entropy_ft import __version__
from entropy_ft.errors import UserError
from entropy_ft.logs import log
from entropy_ft.options import Options, option

from . import pipeline_option
from .cluster import ClusterOptions

SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # KFP's projected service-account token


def _experiment_problem(name: str) -> str | None:
    return None if name.strip() else "must not be empty"


@dataclass(frozen=True, kw_only=True)
class EndpointConfig(Options):
    """Where the KFP API is, and the experiment a command works in."""

    host: str | None = option(None, help="KFP endpoint URL (default: $KF_PIPELINES_ENDPOINT)")
    token: str | None = option(None, help="bearer token (default: $KF_PIPELINES_TOKEN or the in-cluster token)")
    experiment: str = option("entropy-ft", check=_experiment_problem,
                             help="KFP experiment to work in (created if missing)")

    def connect(self):
        return client(Endpoint.resolve(self.host, self.token))


@dataclass(frozen=True, kw_only=True)
class RemoteConfig(EndpointConfig):
    """What ``submit`` and ``schedule`` share: the endpoint, the experiment, the pipeline's
    parameters and the cluster settings it is compiled with."""

    pipeline: str = pipeline_option("upload")
    pipeline_name: str = option("", help="name of the uploaded pipeline (default: entropy-ft-<pipeline>)")
    arguments: dict = field(default_factory=dict)  # the pipeline parameters, from the flags
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    @classmethod
    def add_arguments(cls, parser) -> None:
        from .definitions import add_pipeline_flags

        super().add_arguments(parser)
        add_pipeline_flags(parser)
        ClusterOptions.add_arguments(parser)

    @classmethod
    def from_args(cls, args, **overrides):
        from .definitions import arguments_from_args

        return super().from_args(args, arguments=arguments_from_args(args, args.pipeline),
                                 cluster=ClusterOptions.from_args(args), **overrides)


def upload(cfg: RemoteConfig) -> tuple[object, str, str, str]:
    """Compile with the cluster settings and upload as a new pipeline version.

    Returns (client, name, pipeline id, version id)."""
    from .compile import compile_to

    kfp_client = cfg.connect()
    name = cfg.pipeline_name or f"entropy-ft-{cfg.pipeline}"
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(cfg.pipeline, cfg.cluster, Path(tmp, f"{name}.yaml"))
        pipeline_id, version_id = upload_version(kfp_client, package, name, version_name(__version__))
    return kfp_client, name, pipeline_id, version_id


@dataclass(frozen=True)
class Endpoint:
    host: str
    token: str | None

    @classmethod
    def resolve(cls, host: str | None, token: str | None) -> "Endpoint":
        """``--host`` or KF_PIPELINES_ENDPOINT; ``--token``, KF_PIPELINES_TOKEN or the in-cluster
        service-account token."""
        host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
        if not host:
            raise UserError("no KFP endpoint: pass --host or set KF_PIPELINES_ENDPOINT")
        if not host.startswith(("http://", "https://")):
            raise UserError(f"--host {host}: expected an http:// or https:// URL")
        token = token or os.environ.get("KF_PIPELINES_TOKEN")
        sa_path = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", SA_TOKEN_PATH))
        if not token and sa_path.is_file():
            token = sa_path.read_text().strip()
        return cls(host.rstrip("/"), token)


def check_reachable(endpoint: Endpoint, timeout: float = 5.0) -> None:
    """Fail fast with a plain message instead of kfp.Client's 25 s of healthz retries."""
    url = f"{endpoint.host}/apis/v2beta1/healthz"
    request = urllib.request.Request(url)
    if endpoint.token:
        request.add_header("Authorization", f"Bearer {endpoint.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UserError(f"{endpoint.host}: the KFP endpoint refused the credentials (HTTP {exc.code})") from exc
        raise UserError(f"{endpoint.host}: KFP health check answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"{endpoint.host}: KFP endpoint unreachable ({getattr(exc, 'reason', exc)})") from exc


def client(endpoint: Endpoint):
    import kfp

    check_reachable(endpoint)
    with contextlib.redirect_stdout(sys.stderr):  # kfp prints links on stdout; ours is for the summary
        return kfp.Client(host=endpoint.host, existing_token=endpoint.token)


def upload_version(kfp_client, package: Path, pipeline_name: str, version_name: str) -> tuple[str, str]:
    """Upload ``package`` as a new version of ``pipeline_name`` (creating the pipeline the first time).

    Returns (pipeline id, version id)."""
    with contextlib.redirect_stdout(sys.stderr):
        pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline = kfp_client.upload_pipeline(str(package), pipeline_name=pipeline_name)
            pipeline_id = pipeline.pipeline_id
            versions = kfp_client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
            if not versions.pipeline_versions:
                raise UserError(f"KFP created pipeline {pipeline_name} ({pipeline_id}) without a version")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version = kfp_client.upload_pipeline_version(str(package), version_name, pipeline_id=pipeline_id)
            version_id = version.pipeline_version_id
    log.info("pipeline %s: id %s, version %s", pipeline_name, pipeline_id, version_id)
    return pipeline_id, version_id


def version_name(project_version: str) -> str:
    """Unique, readable version names: project version plus UTC time."""
    return f"{project_version}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def submit_run(kfp_client, experiment: str, run_name: str, pipeline_id: str, version_id: str, arguments: dict) -> str:
    with contextlib.redirect_stdout(sys.stderr):
        exp = kfp_client.create_experiment(experiment)
        run = kfp_client.run_pipeline(
            experiment_id=exp.experiment_id, job_name=run_name, params=arguments,
            pipeline_id=pipeline_id, version_id=version_id,
        )
    return run.run_id


def schedule_run(kfp_client, experiment: str, job_name: str, cron: str, pipeline_id: str, version_id: str,
                 arguments: dict) -> tuple[str, list[str]]:
    """A recurring run that never overlaps itself and does not backfill missed intervals.

    Declarative: recurring runs of the same name in the experiment are replaced (deleted once
    the new one exists, so a failure leaves the old schedule running). Returns the new id and
    the ids it replaced."""
    with contextlib.redirect_stdout(sys.stderr):
        exp = kfp_client.create_experiment(experiment)
        old = [job["id"] for job in recurring_runs(kfp_client, exp.experiment_id, job_name)]
        job = kfp_client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron,
            max_concurrency=1, no_catchup=True, params=arguments,
            pipeline_id=pipeline_id, version_id=version_id,
        )
        for job_id in old:
            kfp_client.delete_recurring_run(job_id)
    return job.recurring_run_id, old


def experiment_id(kfp_client, experiment: str) -> str | None:
    """The id of an existing experiment, or None (listing must not create one)."""
    with contextlib.redirect_stdout(sys.stderr):
        try:
            return kfp_client.get_experiment(experiment_name=experiment).experiment_id
        except ValueError:  # kfp: "No experiment is found with name ..."
            return None


def recurring_runs(kfp_client, experiment: str, name: str | None = None) -> list[dict]:
    """The recurring runs of an experiment (id), optionally only those named ``name``, every page."""
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
    query = json.dumps({"predicates": [predicate]}) if name else None
    jobs, token = [], ""
    with contextlib.redirect_stdout(sys.stderr):
        while True:
            page = kfp_client.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment,
                                                  filter=query)
            for job in page.recurring_runs or []:
                cron = job.trigger.cron_schedule.cron if job.trigger and job.trigger.cron_schedule else None
                version = job.pipeline_version_reference
                jobs.append({"id": job.recurring_run_id, "name": job.display_name, "cron": cron,
                             "status": job.status, "mode": job.mode,
                             "pipeline_version_id": version.pipeline_version_id if version else None})
            token = page.next_page_token
            if not token:
                return [j for j in jobs if name is None or j["name"] == name]

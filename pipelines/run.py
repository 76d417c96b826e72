"""Run the training pipeline (or ``--pipeline ablation``) end to end on this machine through kfp.local.

Each component runs as a subprocess of the current Python environment
(``SubprocessRunner(use_venv=False)``, no Docker): exactly the function that runs in the
component image on a cluster. Artifacts land under ``<root>/pipeline-root/<run>/<task>/...``;
``ingest`` and ``profile`` are cached by their inputs under ``<root>/cache``; MLflow uses the
embedded store under ``<root>/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set.

Every parameter is checked, and every local input (data paths, a weights file) looked at,
before the first task starts; a task that fails on bad input ends the run with its own
one-line message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from entropy_ft.errors import UserError
from entropy_ft.kfp_outputs import ERROR_DIR_ENV
from entropy_ft.logs import log
from entropy_ft.model.factory import weights_problem
from entropy_ft.options import Options, csv, option

from . import pipeline_option

# task directory -> output artifact, per pipeline: what `entropy-ft run` points the user at
OUTPUTS = {
    "training": {
        "dataset": "ingest/dataset",
        "profile": "profile/profile",
        "selection": "select/selection",
        "model": "finetune/model",
        "evaluation": "evaluate/evaluation",
        "external": "evaluate-external/evaluation",  # only with --external-data
        "registration": "register/report",
    },
    "ablation": {
        "dataset": "ingest/dataset",
        "profile": "profile/profile",
        "comparison": "compare/comparison",
    },
}


def _local_root_problem(root: str) -> str | None:
    return "a local run keeps its artifacts on this machine; give a folder" if root.startswith("s3://") else None


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    pipeline: str = pipeline_option("run")
    root: str = option("out", check=_local_root_problem, help="folder for artifacts, cache and the local MLflow store")
    no_cache: bool = option(False, help="run every step afresh: ingest and profile do not reuse cached results")
    arguments: dict = field(default_factory=dict)  # the pipeline parameters, from the flags

    @classmethod
    def add_arguments(cls, parser) -> None:
        from .definitions import add_pipeline_flags

        super().add_arguments(parser)
        add_pipeline_flags(parser)

    @classmethod
    def from_args(cls, args, **overrides):
        from .definitions import arguments_from_args

        return super().from_args(args, arguments=arguments_from_args(args, args.pipeline), **overrides)


def local_inputs(arguments: dict) -> dict:
    """The arguments with local data, external data, labels and weight paths made absolute (components may run
    in another working directory); a local path that does not exist is a UserError before anything starts."""
    out = dict(arguments)
    if "data" in out:
        sources = []
        for source in csv(out["data"]):
            if not source.startswith(("s3://", "synthetic:")):
                if not Path(source).exists():
                    raise UserError(f"--data {source}: no such file or folder")
                source = str(Path(source).resolve())
            sources.append(source)
        out["data"] = ",".join(sources)
    if out.get("extends") and not out["extends"].startswith("s3://"):
        if not Path(out["extends"]).exists():
            raise UserError(f"--extends {out['extends']}: no such dataset folder")
        out["extends"] = str(Path(out["extends"]).resolve())
    if out.get("external_data") and not out["external_data"].startswith(("s3://", "synthetic:")):
        if not Path(out["external_data"]).exists():
            raise UserError(f"--external-data {out['external_data']}: no such file or folder")
        out["external_data"] = str(Path(out["external_data"]).resolve())
    if out.get("labels") and not out["labels"].startswith("s3://"):
        if not Path(out["labels"]).is_file():
            raise UserError(f"--labels {out['labels']}: no such file")
        out["labels"] = str(Path(out["labels"]).resolve())
    if "weights" in out:
        if problem := weights_problem(str(out["weights"])):
            raise UserError(problem)
        if Path(out["weights"]).is_file():
            out["weights"] = str(Path(out["weights"]).resolve())
    return out


def run(cfg: Config) -> dict:
    from entropy_ft.tracking import runs

    arguments = local_inputs(cfg.arguments)
    log.info("running the %s pipeline locally with %s", cfg.pipeline, json.dumps(arguments))
    result = run_local(cfg.pipeline, arguments, Path(cfg.root), cache=not cfg.no_cache)
    uri = runs.tracking_uri()
    for name, path in result["outputs"].items():
        log.info("%-12s %s", name, path)
    reports = [str(p) for p in sorted(Path(result["run_dir"]).rglob("*.html"))]
    log.info("reports: %s", ", ".join(reports))
    summary = {**result, "reports": reports, "mlflow_tracking_uri": runs.redact(uri)}
    if cfg.pipeline == "training":
        ui = f"mlflow ui --backend-store-uri {uri} --port 5000" if uri.startswith("sqlite:") else f"open {uri}"
        summary["mlflow_ui"] = ui
        log.info("MLflow: %s  (then open http://127.0.0.1:5000)", ui)
    return summary


def run_local(pipeline: str, arguments: dict, root: Path, cache: bool = True) -> dict:
    """Run ``pipeline`` with ``arguments`` through kfp.local; returns where its outputs are."""
    from kfp import local
    from kfp.local import logging_utils

    from .definitions import build

    if not sys.stderr.isatty():  # kfp.local colours its log lines whatever the stream is
        logging_utils.color_text = lambda text, _color: text
    # every task runs in this environment on purpose (use_venv=False): kfp.local's warning that a
    # task's image is not this Python says nothing here, once per task
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom",
                            category=RuntimeWarning)
    root = root.resolve()
    pipeline_root = root / "pipeline-root"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ENTROPY_FT_HOME", str(root))  # embedded MLflow store beside the artifacts
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=cache, cache_root=str(root / "cache"), raise_on_error=True)
    func = build(pipeline, cache=cache)
    before = set(pipeline_root.iterdir())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="entropy-ft-errors-") as errors, _task_errors_to(errors), \
            stdout_to_stderr(), _cache_hits() as cached:
        try:
            func(**arguments)
        except RuntimeError as exc:  # kfp.local: "Pipeline '...' finished with status FAILURE"
            found = sorted(Path(errors).glob("*.txt"))
            if found:  # a task failed on bad input and said why: that is the run's error
                raise UserError(found[0].read_text().strip()) from None
            raise UserError(f"the {pipeline} pipeline failed: {exc}; the failing task's log is above") from None
    seconds = time.monotonic() - started
    runs = sorted(set(pipeline_root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"kfp.local wrote no run directory under {pipeline_root}")
    run_dir = runs[-1]
    outputs = {name: str(run_dir / rel) for name, rel in OUTPUTS[pipeline].items() if (run_dir / rel).exists()}
    if cached:
        log.info("reused cached results of %s (same inputs as an earlier run; --no-cache runs them afresh)",
                 ", ".join(cached))
    return {"pipeline": pipeline, "run_dir": str(run_dir), "outputs": outputs, "cached": cached,
            "seconds": round(seconds, 1)}


class _CacheHits(logging.Handler):
    """kfp.local reports a cache hit on the root logger at INFO, which nobody sees: collect the
    task names, and let warnings through as Python's last-resort handler would."""

    HIT = re.compile(r"^Task (\S+) cache hit")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.tasks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hit := self.HIT.match(record.getMessage()):
            self.tasks.append(hit.group(1))
        elif record.levelno >= logging.WARNING:
            sys.stderr.write(self.format(record) + "\n")


@contextlib.contextmanager
def _cache_hits() -> Iterator[list[str]]:
    root = logging.getLogger()
    handler, level = _CacheHits(), root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    try:
        yield handler.tasks
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def _task_errors_to(folder: str) -> Iterator[None]:
    """Tasks (subprocesses) leave their user errors in ``folder`` for the block's duration."""
    previous = os.environ.get(ERROR_DIR_ENV)
    os.environ[ERROR_DIR_ENV] = folder
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ERROR_DIR_ENV, None)
        else:
            os.environ[ERROR_DIR_ENV] = previous


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything printed to fd 1 (kfp.local's logs, the components' output) to stderr,
    so stdout carries only the command's JSON summary. Also undoes kfp.local's patch of
    ``builtins.print`` (its ``indented_print`` is not always restored after a ParallelFor)."""
    import builtins

    original_print = builtins.print
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        builtins.print = original_print

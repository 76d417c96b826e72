"""Run a pipeline on this machine through ``kfp.local`` (SubprocessRunner, no Docker).

Each component runs as a subprocess of the current Python environment, exactly the
function that runs in the component image on a cluster. Artifacts land under
``<root>/pipeline-root/<run>/<task>/...``; MLflow defaults to the embedded store under
``<root>/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from entropy_ft.errors import UserError

from . import build

# task directory -> output artifact, per pipeline: what `entropy-ft run` points the user at
OUTPUTS = {
    "training": {
        "dataset": "ingest/dataset",
        "profile": "profile-entropy/profile",
        "selection": "select-layers/selection",
        "model": "finetune/model",
        "evaluation": "evaluate-noise/evaluation",
        "registration": "register/report",
    },
    "ablation": {
        "dataset": "ingest/dataset",
        "profile": "profile-entropy/profile",
        "comparison": "compare/comparison",
    },
}


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


def run_local(pipeline: str, arguments: dict, root: Path) -> dict:
    """Run ``pipeline`` with ``arguments``; returns where its outputs are."""
    from kfp import local

    root = root.resolve()
    pipeline_root = root / "pipeline-root"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ENTROPY_FT_HOME", str(root))  # embedded MLflow store beside the artifacts
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=True, cache_root=str(root / "cache"), raise_on_error=True)
    func = build(pipeline)
    before = set(pipeline_root.iterdir())
    started = time.monotonic()
    with stdout_to_stderr():
        try:
            func(**arguments)
        except RuntimeError as exc:  # kfp.local: "Pipeline '...' finished with status FAILURE"
            raise UserError(f"the {pipeline} pipeline failed: {exc}; the failing task's log is above") from exc
    seconds = time.monotonic() - started
    runs = sorted(set(pipeline_root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"kfp.local wrote no run directory under {pipeline_root}")
    run_dir = runs[-1]
    outputs = {name: str(run_dir / rel) for name, rel in OUTPUTS[pipeline].items() if (run_dir / rel).exists()}
    return {"pipeline": pipeline, "run_dir": str(run_dir), "outputs": outputs, "seconds": round(seconds, 1)}

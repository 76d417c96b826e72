"""What a KFP component hands to the KFP UI, and how it ends: the same for every stage.

Components are thin adapters (see ``components/``): they build the stage's Config from the
task's inputs with :func:`run_step`, then copy the stage's HTML report and Markdown summary
into KFP output artifacts and log the summary's numbers as KFP metrics.

Imported inside component bodies, so it must not import kfp at module level.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from entropy_ft.errors import UserError
from entropy_ft.reports import flatten_numbers

ERROR_DIR_ENV = "ENTROPY_FT_TASK_ERRORS"
"""A folder where a failing task leaves its user error (set by ``entropy-ft run``), so the run
can end with that message instead of kfp.local's "Inner task failed"."""


def run_step(step: ModuleType, task: str, *, hooks: dict | None = None, **values) -> dict:
    """Run ``step`` with ``step.Config(**values)`` (and ``hooks``, such as a training callback); returns its summary.

    A :class:`UserError` (bad input: a missing file, a malformed artifact) ends the task with
    exit 2 and the message as its last line, not a traceback, and is left for ``entropy-ft
    run`` to repeat.
    """
    try:
        return step.run(step.Config(**values), **(hooks or {}))
    except UserError as exc:
        message = f"{task}: {exc}"
        errors = os.environ.get(ERROR_DIR_ENV)
        if errors:
            Path(errors).mkdir(parents=True, exist_ok=True)
            Path(errors, f"{task}.txt").write_text(message + "\n")
        print(f"entropy-ft {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def publish_html(out_dir: str, name: str, html_path: str) -> None:
    """Copy ``<out_dir>/<name>.html`` (a self-contained page) to a KFP HTML artifact."""
    shutil.copyfile(Path(out_dir, f"{name}.html"), html_path)


def log_numbers(metrics, values: dict) -> None:
    """Log every finite number in ``values`` (nested dicts flattened with '_') as KFP metrics.

    The numbers are also written to the artifact's file: a Metrics artifact otherwise has no
    file, and kfp.local treats a cached result whose artifact file is missing as a miss, so a
    task with metrics (ingest, profile) would never be served from its cache."""
    numbers = flatten_numbers(values)
    for name, value in numbers.items():
        metrics.log_metric(name, value)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n")


def before_exit() -> None:
    """The last call of every component body: next the executor writes the outputs and the process exits.

    Moving every object into the collector's permanent generation spares interpreter
    shutdown the collection and one-by-one freeing of the few hundred thousand objects that
    importing torch, torchvision and mlflow creates: exit took 1.0 to 1.7 s of every task that
    imports them, 0.2 s with this, and the process's memory goes back to the OS at exit anyway.
    """
    gc.freeze()

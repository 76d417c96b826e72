"""Run one function in a fresh interpreter that does not outlive the benchmark that started it.

A benchmark runs each measurement in its own process so that its memory and threads are its own. If the
benchmark itself is killed (Ctrl-C in a terminal that only reaches the parent, ``kill``, an OOM kill),
a plain child would run on to the end of its fine-tuning, minutes of both cores, and skew whatever the
machine measures next. Here the child watches its parent's sentinel; when the parent is gone it sends
itself SIGTERM, which the training loop turns into a mid-epoch checkpoint (so a re-run resumes there),
and exits outright if it has not gone within ``GRACE_SECONDS``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable

GRACE_SECONDS = 60  # a checkpoint takes seconds; evaluation ignores SIGTERM's flag and is cut short


def run(fn: Callable[..., object], *args: object) -> int:
    """``fn(*args)`` in a new (spawned, non-daemonic, so it may start its own workers) process; its exit code."""
    proc = multiprocessing.get_context("spawn").Process(target=_guarded, args=(fn, *args))
    proc.start()
    proc.join()
    return proc.exitcode


def _guarded(fn: Callable[..., object], *args: object) -> None:
    threading.Thread(target=_die_with_parent, name="die-with-parent", daemon=True).start()
    fn(*args)


def _die_with_parent() -> None:
    parent = multiprocessing.parent_process()
    multiprocessing.connection.wait([parent.sentinel])  # ready once the parent has exited, however it died
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(GRACE_SECONDS)
    os._exit(143)

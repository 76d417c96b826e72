"""Preemption: SIGTERM (a Kubernetes pod being evicted) becomes "checkpoint at the next batch and exit 143".

The signal handler only sets a flag; the training loop checks it at every batch boundary,
where the state is consistent, writes a checkpoint and raises :class:`Preempted`. A
``SystemExit`` subclass, so it passes through ``except Exception`` handlers, runs every
``finally`` (staging directories are cleaned up) and ends the process with 143 = 128 +
SIGTERM, the code Kubernetes and shells expect from a process stopped by SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass

from entropy_ft.logs import log

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """Raised after a SIGTERM once the checkpoint is written: the process exits 143 (128 + SIGTERM)."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


@dataclass
class StopFlag:
    """Set by the SIGTERM handler; the loop checks it at every batch boundary."""

    requested: bool = False


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopFlag]:
    """Turn SIGTERM into a request to checkpoint and stop, for the duration of the block."""
    flag = StopFlag()

    def handler(signum, _frame) -> None:
        log.warning("received signal %d: checkpointing at the next batch boundary", signum)
        flag.requested = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: the caller owns signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)

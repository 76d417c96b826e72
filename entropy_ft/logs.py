"""Human-facing output: logs and progress bars go to stderr, stdout is kept for the JSON summary."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("entropy_ft")


class _Stderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when each record arrives, not as it was when the handler
    was made: where stderr is replaced (a notebook, kfp.local's runner, a test's capture) and the old one closed,
    a handler that kept it would fail on every record after."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler's, which would bind a stream (as logging.lastResort's)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def setup_logging(verbose: bool = False) -> None:
    """Configure the package logger once: one line per event on stderr."""
    if log.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A progress bar on stderr; silent when ENTROPY_FT_NO_PROGRESS is set (tests, CI logs)."""
    disable = bool(os.environ.get("ENTROPY_FT_NO_PROGRESS"))
    bar = tqdm(
        iterable, desc=desc, total=total, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False
    )
    return iter(bar)


def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A manually updated bar (``.update(n)``, ``.set_postfix(...)``) for loops that report figures."""
    disable = bool(os.environ.get("ENTROPY_FT_NO_PROGRESS"))
    return tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)

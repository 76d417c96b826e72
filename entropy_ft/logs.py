"""Human-facing output: logs and progress bars go to stderr, stdout is kept for the JSON summary."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("entropy_ft")


def setup_logging(verbose: bool = False) -> None:
    """Configure the package logger once: one line per event on stderr."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
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

"""The package's log handler writes to stderr as it is now: a replaced and closed stderr is never written to."""

from __future__ import annotations

import io
import sys

from entropy_ft.logs import log, setup_logging


def test_records_follow_stderr_after_it_is_replaced_and_the_old_one_closed(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(log, "handlers", [])  # this test's own handler, made while stderr is ``first``
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging()
    log.info("to the first")
    first.close()  # as a notebook cell's or a test's captured stderr is, once it is done
    monkeypatch.setattr(sys, "stderr", second)
    log.info("to the second")
    assert second.getvalue().endswith("INFO to the second\n")
    assert "Logging error" not in second.getvalue()

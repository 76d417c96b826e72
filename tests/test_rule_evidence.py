"""The product's default and the selection report's statement about entropy against random, held to the
committed rule sweep (benchmarks/results/rule-sweep.json): if new runs change what it shows, this fails."""

from __future__ import annotations

import json
from pathlib import Path

from entropy_ft.selection.rules import DEFAULT_RULE, DEFAULT_STRATEGY, EVIDENCE

SWEEP = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rule-sweep.json").read_text())
ROWS = {row["config"]: row for row in SWEEP["summary"]}


def test_the_default_is_what_the_committed_sweep_supports():
    assert SWEEP["default"] == f"{DEFAULT_STRATEGY} {DEFAULT_RULE}"
    row = ROWS[SWEEP["default"]]
    assert row["complete"] and len(row["seeds"]) == 3
    assert all(row["vs_full"][test]["p_worse"] >= SWEEP["alpha"] for test in ("seeds", "images"))
    assert "random layers filling 75% of the backbone were not" in EVIDENCE


def test_no_entropy_rule_ahead_of_random_and_every_complete_one_below_full():
    assert "no entropy rule was ahead of random" in EVIDENCE and SWEEP["entropy_vs_random"]["ahead"] == []
    complete = [r for r in SWEEP["summary"] if r["strategy"] == "entropy" and r["complete"]]
    assert complete and "every entropy rule with three seeds was significantly below full" in EVIDENCE
    assert all(r["vs_full"]["images"]["p_worse"] < SWEEP["alpha"] for r in complete)

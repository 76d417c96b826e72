"""The product's default and the selection report's statement about entropy against random, held to the
committed rule sweep (benchmarks/results/rule-sweep.json): if new runs change what it shows, this fails."""

from __future__ import annotations

import json
from pathlib import Path

from entropy_ft.selection.rules import DEFAULT_RULE, DEFAULT_STRATEGY, EVIDENCE, parse_rule

SWEEP = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rule-sweep.json").read_text())
ROWS = {row["config"]: row for row in SWEEP["summary"]}


def test_the_default_is_what_the_committed_sweep_supports():
    assert SWEEP["default"] == f"{DEFAULT_STRATEGY} {DEFAULT_RULE}"
    row = ROWS[SWEEP["default"]]
    assert row["complete"] and len(row["seeds"]) == 3
    assert all(row["vs_full"][test]["p_worse"] >= SWEEP["alpha"] for test in ("seeds", "images"))
    assert "random layers filling 75% of the backbone were not" in EVIDENCE


def test_no_entropy_rule_ahead_of_random_and_every_global_one_below_full():
    assert "no entropy rule was ahead of random" in EVIDENCE and SWEEP["entropy_vs_random"]["ahead"] == []
    assert "the paper's below-mean was behind them" in EVIDENCE
    assert "entropy below-mean" in SWEEP["entropy_vs_random"]["behind"]
    complete = [r for r in SWEEP["summary"] if r["strategy"] == "entropy" and r["complete"]]
    global_rules = [r for r in complete if not parse_rule(r["rule"]).needs_stages]
    assert len(global_rules) == 5 and "Every global entropy rule (below-mean, budget:F) was significantly" in EVIDENCE
    assert all(r["vs_full"]["images"]["p_worse"] < SWEEP["alpha"] for r in global_rules)


def test_the_stage_rule_the_evidence_names_holds_and_is_level_with_random():
    row = ROWS["entropy stage-budget:0.9"]
    assert SWEEP["default_with_stages"] == "entropy stage-budget:0.9"
    fewer = f"{100 * row['reduction_vs_full'][0]:.1f}% fewer"
    assert f"stage-budget:0.9, {fewer} parameters) was not below full" in EVIDENCE
    assert "entropy stage-budget:0.9" in SWEEP["entropy_vs_random"]["level"]


def test_more_layers_at_the_same_parameters_usually_led():
    more = SWEEP["breadth"]["more_layers_at_the_same_params"]
    assert "the selection with more layers was usually the more accurate" in EVIDENCE
    assert more["ahead"] > 2 * more["behind"] and SWEEP["breadth"]["sign_test_p"] < SWEEP["alpha"]

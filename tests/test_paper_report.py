"""paper.py's report maths: entropy against full and random, paired by seed over the grid's runs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from paper import entropy_against, entropy_against_markdown  # noqa: E402


def run(strategy: str, seed: int, shipped: float, dedup: float, arch: str = "resnet18") -> dict:
    return {"arch": arch, "strategy": strategy, "seed": seed,
            "test": {"shipped": [{"accuracy": shipped}], "dedup": [{"accuracy": dedup}]}}


def test_pairs_only_the_seeds_both_strategies_ran_and_tests_over_them():
    results = [run("entropy", 0, 0.90, 0.80), run("entropy", 1, 0.92, 0.85), run("entropy", 2, 0.50, 0.50),
               run("random", 0, 0.92, 0.81), run("random", 1, 0.93, 0.86),  # seed 2 of random never ran
               run("full", 1, 0.95, 0.90),
               run("random", 0, 0.99, 0.99, arch="resnet34")]  # no entropy run to pair with
    rows = {row["other"]: row for row in entropy_against(results)}
    assert [(row["arch"], row["other"]) for row in entropy_against(results)] == [("resnet18", "full"),
                                                                                 ("resnet18", "random")]
    random = rows["random"]
    assert random["seeds"] == [0, 1]
    assert random["shipped"]["difference"][0] == pytest.approx(-0.015)
    # differences -0.02 and -0.01: t = -3 on 1 degree of freedom (Cauchy), p = 1 - 2 atan(3) / pi
    assert random["shipped"]["p"] == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    # dedup: both seeds differ by 0.01, so t is undefined and no p is claimed
    assert random["dedup"]["difference"][0] == pytest.approx(-0.01) and random["dedup"]["p"] is None
    full = rows["full"]
    assert full["seeds"] == [1] and full["shipped"]["p"] is None and full["shipped"]["difference"][1] is None
    table = "\n".join(entropy_against_markdown(entropy_against(results)))
    assert "| resnet18 | random | 2 | -1.5 ± 0.7 pp | 0.205 |" in table
    assert "| resnet18 | full | 1 | -3.0 pp | n/a |" in table


def test_nothing_to_pair_writes_no_section():
    assert entropy_against([run("full", 0, 0.9, 0.9)]) == []
    assert entropy_against_markdown([]) == []

"""rule_sweep.py's evidence: paired over seeds and over the same images, and the default it supports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from rule_sweep import (  # noqa: E402
    against_random,
    breadth,
    default_choice,
    job_list,
    markdown,
    over_images,
    parse_args,
    summarize,
)

LABELS = [i % 4 for i in range(200)]
META = {"name": "t", "command": "c", "arch": "resnet18", "started": "s", "finished": "f", "test_images": 200,
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 1, "gpu": None, "python": "3", "torch": "2",
                    "torchvision": "0"},
        "settings": {"image_size": 128, "epochs": 12, "patience": 3, "batch_size": 32, "lr": 0.001,
                     "train_noise": {"sigma_max": 0.2, "p": 0.5}, "profile_images": 512,
                     "weights": {"resnet18": "w.pt"}}}


def run(strategy: str, rule: str | None, seed: int, wrong: list[int], params: int) -> dict:
    """A finished run that gets every test image right except those in ``wrong``."""
    pred = [(y + 1) % 4 if i in wrong else y for i, y in enumerate(LABELS)]
    acc = 1 - len(wrong) / len(LABELS)
    return {"config": strategy if rule is None else f"{strategy} {rule}", "strategy": strategy, "rule": rule,
            "seed": seed, "selected_layers": 5, "trainable_params": params, "reduction_vs_full": 1 - params / 1000,
            "epochs_run": 12, "test_labels": LABELS, "test_predictions": {"0": pred},
            "test": {"shipped": [{"sigma": s, "accuracy": acc} for s in (0.0, 0.2, 0.4)],
                     "dedup": [{"sigma": 0.0, "accuracy": acc}]}}


def test_over_images_pools_the_discordant_images_of_every_seed():
    a = [run("entropy", "budget:0.5", s, wrong=list(range(10)), params=500) for s in range(2)]
    b = [run("full", None, s, wrong=list(range(5, 8)), params=1000) for s in range(2)]
    got = over_images(a, b)
    # per seed, 7 images only full gets right (0-4, 8, 9), none only entropy: 14 and 0 pooled
    assert (got["only_a_right"], got["only_b_right"], got["pairs"]) == (0, 14, 400)
    assert got["difference"] == pytest.approx(-7 / 200)
    assert got["p"] == pytest.approx(stats.binomtest(0, 14, 0.5).pvalue)
    assert got["p_worse"] == pytest.approx(0.5 ** 14)
    assert got["ci"][0] < got["difference"] < got["ci"][1] < 0
    assert [s["seed"] for s in got["per_seed"]] == [0, 1]


def test_the_default_is_the_cheapest_rule_not_significantly_below_full_with_every_seed_done():
    results = []
    for s in range(3):
        results += [
            run("full", None, s, wrong=[s], params=1000),
            # far below full on every seed and image: excluded
            run("entropy", "below-mean", s, wrong=list(range(30 + s)), params=400),
            # level with full but for one image on seed 1
            run("entropy", "budget:0.9", s, wrong=[s] + [50] * (s == 1), params=900),
            run("random", "budget:0.9", s, wrong=[s + 1], params=901),
        ]
    results.append(run("entropy", "budget:0.75", 0, wrong=[0], params=700))  # one seed only: not complete
    rows = summarize(results, seeds=3)
    by = {r["config"]: r for r in rows}
    assert by["entropy below-mean"]["vs_full"]["seeds"]["p_worse"] < 0.05
    assert by["entropy below-mean"]["vs_full"]["images"]["p_worse"] < 0.05
    assert by["entropy budget:0.9"]["vs_random"]["images"]["only_b_right"] == 4  # images 0, 1, 2, and 50
    assert not by["entropy budget:0.75"]["complete"]
    assert default_choice(rows)["config"] == "entropy budget:0.9"
    meta = {**META, "runs_done": 13, "runs_planned": 63}
    text = markdown(meta, rows, default_choice(rows))
    assert "**13 of 63 runs done**" in text and "**entropy budget:0.9**: 10.0% fewer" in text
    assert np.isclose(by["random budget:0.9"]["accuracy"][0], 1 - 1 / 200)


def test_a_random_match_that_holds_with_fewer_parameters_is_the_default_but_a_stage_rule_never():
    results = []
    for s in range(3):
        results += [
            run("full", None, s, wrong=[s], params=1000),
            run("entropy", "budget:0.5", s, wrong=list(range(40 + s)), params=500),  # far behind full and random
            run("random", "budget:0.5", s, wrong=[s + 1], params=500),  # level with full, cheapest that holds
            run("entropy", "stage-budget:0.75", s, wrong=[s], params=600),  # holds, but needs stages
            run("entropy", "budget:0.9", s, wrong=[s], params=900),
            run("random", "stage-budget:0.75", s, wrong=[s + 1], params=600),
            run("random", "budget:0.9", s, wrong=[s + 2], params=900),
        ]
    rows = summarize(results, seeds=3)
    assert default_choice(rows)["config"] == "random budget:0.5"
    entropy_only = [r for r in rows if r["strategy"] != "random"]
    assert default_choice(entropy_only)["config"] == "entropy budget:0.9"
    assert default_choice(entropy_only, stages=True)["config"] == "entropy stage-budget:0.75"
    text = markdown({**META, "runs_done": 9, "runs_planned": 15}, entropy_only, default_choice(entropy_only),
                    default_choice(entropy_only, stages=True))
    assert "With the stage rules admitted, which need a ResNet's stages: **entropy stage-budget:0.75**" in text
    verdict = against_random(rows)
    assert verdict == {"ahead": [], "behind": ["entropy budget:0.5"],
                       "level": ["entropy stage-budget:0.75", "entropy budget:0.9"]}
    meta = {**META, "runs_done": 15, "runs_planned": 15}
    text = markdown(meta, rows, default_choice(rows))
    assert "**random budget:0.5**: 50.0% fewer trainable parameters" in text
    assert "significantly **behind** in 1 (entropy budget:0.5)" in text
    assert "significantly **ahead** of random in 0 (none)" in text


def test_breadth_counts_whether_the_side_with_more_layers_led_at_the_same_parameters():
    def layered(r: dict, layers: int) -> dict:
        return {**r, "selected_layers": layers}

    results = [layered(run("full", None, 0, wrong=[], params=1000), 20)]
    for s in range(2):
        results += [layered(run("entropy", "budget:0.5", s, wrong=list(range(9)), params=500), 6),
                    layered(run("random", "budget:0.5", s, wrong=list(range(3)), params=500), 12)]
    results += [layered(run("entropy", "budget:0.9", 0, wrong=[1], params=900), 18),  # as many layers: skipped
                layered(run("random", "budget:0.9", 0, wrong=[2, 3], params=900), 18),
                {**results[1], "config": "entropy stage-budget:0.5", "same_run_as": "entropy budget:0.5"}]
    got = breadth(results)
    assert got["runs"] == 7 and got["more_layers_at_the_same_params"] == {"ahead": 2, "behind": 0, "tied": 0}
    assert got["spearman_layers"] > got["spearman_params"]  # params tie within each pair, layers do not
    rows = summarize(results, seeds=2)
    text = markdown({**META, "runs_done": 8, "runs_planned": 8}, rows, default_choice(rows), spread=got)
    assert got["sign_test_p"] == pytest.approx(0.5)  # two of two ahead: binomtest(2, 2).pvalue
    assert "the one with more layers was ahead in 2, behind in 0 and level in 0 (two-sided sign test p = 0.5" in text


def test_no_default_before_any_rule_has_every_seed():
    rows = summarize([run("full", None, 0, wrong=[], params=1000), run("entropy", "budget:0.5", 0, [], 500)], 3)
    assert default_choice(rows) is None


def test_the_sweep_runs_every_rule_at_one_seed_before_the_next():
    class Args:
        seeds, budgets, first = 2, [0.9, 0.5], []
    jobs = job_list(Args)
    assert [j["seed"] for j in jobs] == [0] * 13 + [1] * 13
    assert jobs[:3] == [{"strategy": "full", "rule": None, "seed": 0},
                        {"strategy": "entropy", "rule": "below-mean", "seed": 0},
                        {"strategy": "random", "rule": "below-mean", "seed": 0}]
    assert {j["rule"] for j in jobs if j["strategy"] == "random"} == {
        "below-mean", "budget:0.9", "stage-budget:0.9", "budget:0.5", "stage-budget:0.5", "stage-below-mean"}


def test_the_first_configurations_run_at_every_seed_before_the_rest():
    class Args:
        seeds, budgets, first = 3, [0.9], ["full", "entropy stage-budget:0.9", "entropy below-mean"]
    jobs = job_list(Args)
    head = [(j["strategy"], j["rule"], j["seed"]) for j in jobs[:9]]
    assert head == [(st, r, s) for s in range(3)
                    for st, r in (("full", None), ("entropy", "stage-budget:0.9"), ("entropy", "below-mean"))]
    assert len(jobs) == 3 * 9 and jobs[9] == {"strategy": "random", "rule": "below-mean", "seed": 0}


def test_an_unknown_first_configuration_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--first", "full,entropy deep"])
    assert exit_.value.code == 2 and "--first 'entropy deep'" in capsys.readouterr().err

"""Selection stability: resampled selections, their frequencies and spreads, and the --stability threshold."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from entropy_ft.cli import main
from entropy_ft.model.archs import backbone
from entropy_ft.selection.rules import Rule
from entropy_ft.selection.stability import (
    bootstrap_indices,
    resampled_selections,
    stable_layers,
    summarize,
)

RESNET18 = backbone("resnet18", 4)
NAMES = list(RESNET18.costs)
NEAR = "layer4.0.conv2"  # 2,360,320 parameters, as in the flipping layer


def resampled_profile(resamples: int = 40, seed: int = 0) -> list[dict[str, float]]:
    """Half the layers far below the others, the other half far above, and NEAR jittered across the mean:
    resample i moves every layer by a small shared noise and NEAR by a larger one of its own."""
    rng = np.random.default_rng(seed)
    base = {n: (4.0 if i % 2 == 0 else 6.0) for i, n in enumerate(NAMES) if n != NEAR}
    out = []
    for _ in range(resamples):
        entropy = {n: h + rng.normal(0, 0.05) for n, h in base.items()}
        mean_rest = sum(entropy.values()) / len(entropy)
        entropy[NEAR] = mean_rest + rng.normal(0, 0.2)
        out.append({n: entropy[n] for n in NAMES})
    return out


def test_far_layers_are_always_or_never_selected_and_the_near_one_flips():
    selections = resampled_selections(resampled_profile(), RESNET18.costs, Rule("below-mean"))
    report = summarize(selections, RESNET18)
    low = [n for i, n in enumerate(NAMES) if i % 2 == 0 and n != NEAR]
    high = [n for i, n in enumerate(NAMES) if i % 2 == 1 and n != NEAR]
    assert all(report["frequency"][n] == 1.0 for n in low)
    assert all(report["frequency"][n] == 0.0 for n in high)
    assert 0.2 < report["frequency"][NEAR] < 0.8
    assert list(report["frequency"]) == NAMES and report["resamples"] == 40
    assert report["distinct_sets"] == 2  # with and without NEAR
    with_near = RESNET18.accounting([*low, NEAR])["reduction_vs_full"]
    without = RESNET18.accounting(low)["reduction_vs_full"]
    r = report["reduction_vs_full"]
    assert r["p5"] == pytest.approx(with_near) and r["p95"] == pytest.approx(without)
    share = report["frequency"][NEAR]
    assert r["mean"] == pytest.approx(share * with_near + (1 - share) * without)
    assert r["std"] == pytest.approx(abs(without - with_near) * (share * (1 - share)) ** 0.5)
    assert report["selected_layers"]["p5"] == len(low) and report["selected_layers"]["p95"] == len(low) + 1


def test_stable_layers_keep_those_selected_in_at_least_the_threshold():
    selections = [["a", "b"], ["a", "b", "c"], ["a"], ["a", "c"], ["a", "b"], ["a"], ["a"], ["a"], ["a"], ["a"]]
    names = ["a", "b", "c", "d"]  # b in 3 of 10, c in 2 of 10
    assert stable_layers(selections, names, 1.0) == ["a"]
    assert stable_layers(selections, names, 0.3) == ["a", "b"]  # 3 of 10 is 0.3 exactly, not a rounding miss
    assert stable_layers(selections, names, 0.2) == ["a", "b", "c"]
    assert stable_layers(selections, names, 0.05) == ["a", "b", "c"]  # d never: no threshold above 0 takes it
    with pytest.raises(ValueError):
        stable_layers(selections, names, 0.0)


def test_stability_is_the_rules_own_a_rank_rule_keeps_a_layer_that_flips_around_the_mean():
    """NEAR crosses the mean but always ranks 10th of 20: quantile:0.5 takes it on every resample."""
    selections = resampled_selections(resampled_profile(), RESNET18.costs, Rule("quantile", 0.5))
    report = summarize(selections, RESNET18)
    assert report["frequency"][NEAR] == 1.0 and report["distinct_sets"] == 1
    assert report["reduction_vs_full"]["std"] == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_indices_are_seeded_draws_with_replacement():
    draws = bootstrap_indices(8, 500, seed=3)
    assert draws.shape == (500, 8) and draws.min() == 0 and draws.max() == 7
    assert np.array_equal(draws, bootstrap_indices(8, 500, seed=3))
    assert not np.array_equal(draws, bootstrap_indices(8, 500, seed=4))
    assert any(len(set(row)) < 8 for row in draws)  # with replacement: some batches twice
    assert bootstrap_indices(8, 0, seed=0).shape == (0, 8)


@pytest.mark.parametrize("name", ["training", "ablation"])
def test_pipelines_hand_bootstrap_to_profile_and_stability_to_select(tmp_path, name):
    assert main(["compile", "--pipeline", name, "--out", str(tmp_path / "p.yaml")]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    dag = spec["root"]["dag"]["tasks"]
    if name == "ablation":  # select runs inside the ParallelFor
        loop = next(t for t in dag.values() if "parameterIterator" in t)
        dag = {**dag, **spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]}
    profile_in = dag["profile"]["inputs"]["parameters"]["bootstrap"]
    select_in = dag["select"]["inputs"]["parameters"]["stability"]
    assert profile_in["componentInputParameter"] == "bootstrap"
    assert select_in["componentInputParameter"].endswith("stability")
    assert spec["root"]["inputDefinitions"]["parameters"]["stability"]["defaultValue"] == 0.0


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--stability", "1.5", "--stability 1.5: expected 0 to 1"),
    ("--bootstrap", "-1", "--bootstrap -1: expected 0 to 10000 resamples"),
])
def test_bad_pipeline_flags_exit_2_before_any_task(tmp_path, capsys, flag, value, message):
    assert main(["run", "--root", str(tmp_path / "out"), flag, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""Layer selection: rules, baselines, exact parameter accounting."""

from __future__ import annotations

import random

import pytest

from entropy_ft.errors import UserError
from entropy_ft.model.factory import build_model, measure_backbone
from entropy_ft.selection.rules import Rule, parse_rule, select_by_entropy, select_random, strategy_layers


@pytest.fixture(scope="module")
def resnet18():
    model, _ = build_model("resnet18", 4, "none")
    return model


@pytest.fixture(scope="module")
def costs(resnet18):
    return measure_backbone(resnet18, "resnet18").costs


@pytest.fixture(scope="module")
def entropy(costs):
    rng = random.Random(7)
    return {name: rng.uniform(3.0, 8.0) for name in costs}


def test_resnet18_parameter_counts(resnet18, costs):
    full = measure_backbone(resnet18, "resnet18").accounting(strategy_layers("full", list(costs)))
    head = measure_backbone(resnet18, "resnet18").accounting(strategy_layers("head", list(costs)))
    assert full["trainable_params"] == full["full_params"] == full["total_params"] == 11_178_564
    assert full["reduction_vs_full"] == 0.0
    assert head["trainable_params"] == 2_052
    assert head["trainable_modules"] == ["fc"]
    assert head["reduction_vs_full"] == pytest.approx(1 - 2_052 / 11_178_564)
    # a layer's cost is its conv plus its BatchNorm: layer1.0.conv1 is 64*64*3*3 + 2*64
    assert costs["layer1.0.conv1"] == 36_864 + 128
    assert costs["layer2.0.downsample.0"] == 64 * 128 + 2 * 128
    assert sum(costs.values()) + 2_052 == 11_178_564


def test_accounting_counts_selected_convs_with_their_batchnorms(resnet18):
    acc = measure_backbone(resnet18, "resnet18").accounting(["conv1", "layer4.1.conv2"])
    assert acc["trainable_modules"] == ["conv1", "bn1", "layer4.1.conv2", "layer4.1.bn2", "fc"]
    assert acc["trainable_params"] == (64 * 3 * 7 * 7 + 128) + (512 * 512 * 9 + 1024) + 2_052


def test_below_mean_picks_exactly_the_layers_below_the_mean(entropy, costs):
    mean = sum(entropy.values()) / len(entropy)
    chosen = select_by_entropy(entropy, costs, parse_rule("below-mean"))
    assert chosen == [n for n in entropy if entropy[n] < mean]
    assert 0 < len(chosen) < len(entropy)


def test_quantile_picks_the_lowest_fraction(entropy, costs):
    chosen = select_by_entropy(entropy, costs, parse_rule("quantile:0.25"))
    assert len(chosen) == 5  # 25% of resnet18's 20 backbone convs
    assert max(entropy[n] for n in chosen) < min(entropy[n] for n in entropy if n not in chosen)
    assert list(chosen) == [n for n in entropy if n in chosen]  # forward order
    assert select_by_entropy(entropy, costs, parse_rule("quantile:0")) == []
    assert select_by_entropy(entropy, costs, parse_rule("quantile:1")) == list(entropy)


def test_budget_takes_lowest_entropy_layers_up_to_the_cap(entropy, costs):
    backbone = sum(costs.values())
    chosen = select_by_entropy(entropy, costs, parse_rule("budget:0.3"))
    used = sum(costs[n] for n in chosen)
    assert used <= 0.3 * backbone
    rest = sorted((n for n in entropy if n not in chosen), key=entropy.get)
    assert max(entropy[n] for n in chosen) < entropy[rest[0]]  # a prefix of the entropy order
    assert used + costs[rest[0]] > 0.3 * backbone  # the next layer would break the cap


def test_equal_entropies_break_ties_by_forward_order(costs):
    flat = dict.fromkeys(costs, 5.0)
    assert select_by_entropy(flat, costs, Rule("quantile", 0.1)) == list(costs)[:2]
    assert select_by_entropy(flat, costs, Rule("below-mean")) == []


def test_random_is_reproducible_and_matches_the_budget_within_one_layer(entropy, costs):
    budget = sum(costs[n] for n in select_by_entropy(entropy, costs, parse_rule("below-mean")))
    first = select_random(costs, budget, seed=3)
    assert select_random(costs, budget, seed=3) == first
    assert len({tuple(select_random(costs, budget, seed=s)) for s in range(5)}) > 1
    used = sum(costs[n] for n in first)
    assert used <= budget
    assert budget - used < min(costs[n] for n in costs if n not in first)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quantile:1.5", "Q must be between 0 and 1"),
        ("budget:x", "F must be a number"),
        ("budget:-0.1", "F must be between 0 and 1"),
        ("quantile:nan", "Q must be between 0 and 1"),
        ("foo", "unknown rule"),
        ("quantile", "unknown rule"),
        ("below-mean:2", "unknown rule"),
    ],
)
def test_bad_rules_are_user_errors(text, message):
    with pytest.raises(UserError, match=message) as err:
        parse_rule(text)
    assert repr(text) in str(err.value)


def test_rules_round_trip_to_text():
    assert [str(parse_rule(t)) for t in ("below-mean", "quantile:0.50", "budget:.3")] == [
        "below-mean", "quantile:0.5", "budget:0.3"]


@pytest.mark.parametrize("arch", ["resnet34", "squeezenet1_0", "squeezenet1_1"])
def test_full_selection_trains_every_parameter(arch):
    model, _ = build_model(arch, 4, "none")
    costs = measure_backbone(model, arch).costs
    full = measure_backbone(model, arch).accounting(list(costs))
    assert full["trainable_params"] == full["full_params"] == sum(p.numel() for p in model.parameters())
    assert sum(costs.values()) == full["full_params"] - measure_backbone(model, arch).accounting([])["trainable_params"]

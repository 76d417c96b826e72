"""`entropy-ft profile` and `entropy-ft select`: artifacts, bad input, the console script end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from entropy_ft import plots
from entropy_ft.cli import main
from entropy_ft.model.factory import build_model, conv_layers
from entropy_ft.selection.rules import PAPER_RULE
from entropy_ft.steps import profile, select


@pytest.fixture(scope="module")
def profiled(synthetic_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "profile"
    profile.run(profile.Config(dataset=str(synthetic_dataset), arch="resnet18", weights="none", out=str(out),
                               images=32, batch_size=16))
    return out


def test_profile_json_describes_every_conv_in_forward_order(profiled, synthetic_dataset):
    data = json.loads((profiled / "profile.json").read_text())
    model, _ = build_model("resnet18", 4, "none")
    assert [row["name"] for row in data["layers"]] == conv_layers(model, "resnet18")
    assert data["layers"][0]["params"] == 64 * 3 * 7 * 7 + 2 * 64
    assert (data["num_images"], data["image_size"], data["tap"], data["estimator"]) == (32, 32, "conv", "histogram")
    assert data["classes"] == json.loads((synthetic_dataset / "manifest.json").read_text())["classes"]
    assert all(0 < row["normalized_entropy"] <= 1 for row in data["layers"])
    assert all(row["entropy_std"] > 0 for row in data["layers"])  # 2 batches of different images
    assert "<svg" in (profiled / "profile.html").read_text()
    assert (profiled / "profile.png").read_bytes()[:4] == b"\x89PNG"


def test_profiling_a_dataset_twice_gives_the_same_profile(profiled, synthetic_dataset, tmp_path):
    again = tmp_path / "again"
    profile.run(profile.Config(dataset=str(synthetic_dataset), arch="resnet18", weights="none", out=str(again),
                               images=32, batch_size=16))
    first = json.loads((profiled / "profile.json").read_text())
    second = json.loads((again / "profile.json").read_text())
    assert first["layers"] == second["layers"]


def test_stratified_subset_keeps_the_class_mix_and_follows_the_seed():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    picked = profile.stratified_indices(labels, 20, seed=0)
    assert Counter(labels[picked].tolist()) == {0: 12, 1: 6, 2: 2}
    assert np.array_equal(picked, profile.stratified_indices(labels, 20, seed=0))
    assert not np.array_equal(picked, profile.stratified_indices(labels, 20, seed=1))
    assert len(profile.stratified_indices(labels, 7, seed=0)) == 7
    assert np.array_equal(profile.stratified_indices(labels, 500, seed=0), np.arange(100))


def test_random_without_a_budget_matches_the_entropy_selection(profiled, tmp_path):
    select.run(select.Config(profile=str(profiled), strategy="entropy", out=str(tmp_path / "entropy"),
                             rule="quantile:0.5"))
    select.run(select.Config(profile=str(profiled / "profile.json"), strategy="random", out=str(tmp_path / "random"),
                             rule="quantile:0.5", seed=4))
    select.run(select.Config(profile=str(profiled), strategy="random", out=str(tmp_path / "from"), seed=4,
                             budget_from=str(tmp_path / "entropy")))
    chosen = json.loads((tmp_path / "entropy" / "selection.json").read_text())
    rand = json.loads((tmp_path / "random" / "selection.json").read_text())
    costs = {row["name"]: row["params"] for row in json.loads((profiled / "profile.json").read_text())["layers"]}
    assert rand["budget_params"] == chosen["trainable_params"]
    assert rand["layers"] != chosen["layers"]
    gap = chosen["trainable_params"] - rand["trainable_params"]
    assert 0 <= gap < min(costs[n] for n in costs if n not in rand["layers"])
    assert json.loads((tmp_path / "from" / "selection.json").read_text())["layers"] == rand["layers"]
    assert rand["profile_sha256"] == chosen["profile_sha256"]
    html = (tmp_path / "random" / "selection.html").read_text()
    assert html.count(">yes</td>") == len(rand["layers"])


def test_profile_keeps_every_resampled_entropy_and_the_default_rules_frequencies(profiled):
    data = json.loads((profiled / "profile.json").read_text())
    boot = data["bootstrap"]
    names = [row["name"] for row in data["layers"]]
    assert (boot["resamples"], boot["unit"], boot["batches"], boot["batch_size"]) == (20, "batch", 2, 16)
    assert list(boot["entropies"]) == names and all(len(h) == 20 for h in boot["entropies"].values())
    below = boot["rules"]["below-mean"]
    assert list(below["frequency"]) == names and below["resamples"] == 20
    for i in range(20):  # each resample's below-mean choice, counted by hand
        entropy = {n: boot["entropies"][n][i] for n in names}
        mean = sum(entropy.values()) / len(names)
        for n in names:
            below["frequency"][n] -= (entropy[n] < mean) / 20
    assert all(abs(f) < 1e-9 for f in below["frequency"].values())
    assert 0 <= below["reduction_vs_full"]["p5"] <= below["reduction_vs_full"]["p95"] < 1


def test_one_batch_the_channel_estimator_or_bootstrap_0_record_no_bootstrap(synthetic_dataset, tmp_path, caplog):
    cases = {"one": {"images": 16}, "channel": {"images": 32, "batch_size": 16, "estimator": "channel"},
             "off": {"images": 32, "batch_size": 16, "bootstrap": 0}}
    for name, kw in cases.items():
        profile.run(profile.Config(dataset=str(synthetic_dataset), arch="resnet18", weights="none",
                                   out=str(tmp_path / name), **kw))
        assert json.loads((tmp_path / name / "profile.json").read_text())["bootstrap"] is None
    assert "--bootstrap 20 skipped: resampling needs at least 2 batches, got 1 (16 images, --batch-size 32)" \
        in caplog.text
    assert "--bootstrap 20 skipped: the channel estimator with 256 bins counts over the full sample's range" \
        in caplog.text
    assert caplog.text.count("--bootstrap") == 2


NEAR = "layer4.0.conv2"


def _constructed_profile(profiled: Path, tmp_path: Path, below_in: int, resamples: int = 10) -> tuple[Path, list]:
    """resnet18 with every even layer far below the mean and every odd one far above, except NEAR,
    just below the mean in the profile and in ``below_in`` of ``resamples`` resamples; the low layers."""
    data = json.loads((profiled / "profile.json").read_text())
    names = [row["name"] for row in data["layers"]]
    low = [n for i, n in enumerate(names) if i % 2 == 0 and n != NEAR]

    def entropies(near_below: bool) -> dict[str, float]:
        rest = {n: 4.0 if n in low else 6.0 for n in names if n != NEAR}
        mean = sum(rest.values()) / len(rest)
        return {n: rest[n] if n != NEAR else mean + (-0.01 if near_below else 0.01) for n in names}

    point = entropies(True)
    for row in data["layers"]:
        row["entropy"] = point[row["name"]]
    drawn = [entropies(i < below_in) for i in range(resamples)]
    data["bootstrap"] = {"resamples": resamples, "entropies": {n: [d[n] for d in drawn] for n in names}}
    (tmp_path / "constructed").mkdir()
    (tmp_path / "constructed" / "profile.json").write_text(json.dumps(data))
    return tmp_path / "constructed", low


@pytest.mark.parametrize(("stability", "with_near"), [(0.0, True), (0.5, False), (0.3, True), (1.0, False)])
def test_stability_keeps_only_layers_selected_in_enough_resamples(profiled, tmp_path, stability, with_near):
    constructed, low = _constructed_profile(profiled, tmp_path, below_in=3)
    summary = select.run(select.Config(profile=str(constructed), strategy="entropy", rule=PAPER_RULE,
                                       out=str(tmp_path / "s"), stability=stability))
    data = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert set(data["layers"]) == set(low) | ({NEAR} if with_near else set())
    assert data["stability"]["frequency"][NEAR] == 0.3 and data["stability"]["threshold"] == (stability or None)
    assert all(data["stability"]["frequency"][n] == 1.0 for n in low)
    assert data["stability"]["distinct_sets"] == 2 == summary["resampled_distinct_sets"]
    select.run(select.Config(profile=str(constructed), strategy="random", rule=PAPER_RULE, out=str(tmp_path / "r"),
                             stability=stability))
    assert json.loads((tmp_path / "r" / "selection.json").read_text())["budget_params"] == summary["trainable_params"]


def test_select_without_a_bootstrapped_profile_records_no_stability(profiled, tmp_path, capsys):
    data = json.loads((profiled / "profile.json").read_text())
    data["bootstrap"] = None
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "profile.json").write_text(json.dumps(data))
    select.run(select.Config(profile=str(tmp_path / "plain"), out=str(tmp_path / "s")))
    assert json.loads((tmp_path / "s" / "selection.json").read_text())["stability"] is None
    assert "Stability" not in (tmp_path / "s" / "selection.html").read_text()
    assert main(["select", str(tmp_path / "plain"), "--strategy", "entropy", "--stability", "0.5",
                 "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert f"--stability 0.5: {tmp_path / 'plain' / 'profile.json'} has no bootstrap resamples" in err
    assert not (tmp_path / "s2").exists()


def test_head_selection_trains_only_the_head(profiled, tmp_path):
    summary = select.run(select.Config(profile=str(profiled), strategy="head", out=str(tmp_path / "head")))
    data = json.loads((tmp_path / "head" / "selection.json").read_text())
    assert data["layers"] == [] and data["trainable_modules"] == ["fc"] and data["rule"] is None
    assert summary["trainable_params"] == 2_052 and summary["full_params"] == 11_178_564


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "{data}", "--arch", "resnet99", "--weights", "none", "--out", "{tmp}/p"],
         "unknown architecture 'resnet99'"),
        (["profile", "{tmp}/missing", "--arch", "resnet18", "--weights", "none", "--out", "{tmp}/p"],
         "missing: no such file"),
        (["profile", "{data}", "--arch", "resnet18", "--weights", "{tmp}/nope.pt", "--out", "{tmp}/p"], "--weights"),
        (["profile", "{data}", "--arch", "resnet18", "--weights", "none", "--bins", "1", "--out", "{tmp}/p"],
         "--bins 1"),
        (["select", "{profile}", "--strategy", "entropy", "--rule", "quantile:1.5", "--out", "{tmp}/s"],
         "'quantile:1.5': Q must be in (0, 1]"),
        (["select", "{profile}", "--strategy", "entropy", "--rule", "budget:0", "--out", "{tmp}/s"],
         "'budget:0': F must be in (0, 1]"),
        (["select", "{profile}", "--strategy", "random", "--rule", "stage-budget:1.5", "--out", "{tmp}/s"],
         "'stage-budget:1.5': F must be in (0, 1]"),
        (["select", "{profile}", "--strategy", "entropy", "--rule", "budget:x", "--out", "{tmp}/s"],
         "'budget:x': F must be a number"),
        (["select", "{profile}", "--strategy", "entropy", "--rule", "foo", "--out", "{tmp}/s"], "'foo': unknown rule"),
        (["select", "{profile}", "--strategy", "full", "--rule", "below-mean", "--out", "{tmp}/s"],
         "applies only to --strategy entropy or random"),
        (["select", "{tmp}", "--strategy", "entropy", "--out", "{tmp}/s"], "profile.json: no such file"),
        (["select", "{profile}", "--stability", "1.5", "--out", "{tmp}/s"], "--stability 1.5: expected 0 to 1"),
        (["select", "{profile}", "--stability", "-0.1", "--out", "{tmp}/s"], "--stability -0.1: expected 0 to 1"),
        (["select", "{profile}", "--stability", "nan", "--out", "{tmp}/s"], "--stability nan: expected 0 to 1"),
        (["select", "{profile}", "--strategy", "head", "--stability", "0.5", "--out", "{tmp}/s"],
         "--stability 0.5: applies only to --strategy entropy or random"),
        (["profile", "{data}", "--weights", "none", "--bootstrap", "-1", "--out", "{tmp}/p"],
         "--bootstrap -1: expected 0 to 10000 resamples"),
    ],
)
def test_bad_input_exits_2_with_its_message(argv, message, synthetic_dataset, profiled, tmp_path, capsys):
    args = [a.format(data=synthetic_dataset, profile=profiled, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_a_stage_rule_spreads_the_selection_over_depth_and_is_refused_without_stages(
        profiled, synthetic_dataset, tmp_path, capsys, caplog):
    summary = select.run(select.Config(profile=str(profiled), strategy="entropy", rule="stage-budget:0.5",
                                       out=str(tmp_path / "st")))
    data = json.loads((tmp_path / "st" / "selection.json").read_text())
    assert data["rule"] == "stage-budget:0.5" and summary["rule"] == "stage-budget:0.5"
    assert {name.split(".")[0] for name in data["layers"]} == {"layer1", "layer2", "layer3", "layer4"}
    html = (tmp_path / "st" / "selection.html").read_text()
    assert "Where they sit in depth" in html and "layer4 " in html
    assert "mean of its stage" in html  # the reference the rule used, not the mean over all layers
    assert "by depth: stem 0/1, layer1 2/4 (50% of its parameters), layer2 " in caplog.text

    assert main(["profile", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none", "--images", "8",
                 "--out", str(tmp_path / "sq")]) == 0
    capsys.readouterr()
    for rule in ("stage-below-mean", "stage-budget:0.5"):
        assert main(["select", str(tmp_path / "sq"), "--strategy", "entropy", "--rule", rule,
                     "--out", str(tmp_path / "sq-sel")]) == 2
        err = capsys.readouterr().err
        assert f"--rule {rule}: squeezenet1_1 has no stages" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "sq-sel").exists()
    assert main(["select", str(tmp_path / "sq"), "--strategy", "entropy", "--rule", "budget:0.5",
                 "--out", str(tmp_path / "sq-sel")]) == 0
    assert "by depth: first third " in caplog.text


def test_console_script_profiles_and_selects_end_to_end(synthetic_dataset, tmp_path):
    script = Path(sys.executable).with_name("entropy-ft")
    runs = [
        ["profile", str(synthetic_dataset), "--arch", "resnet18", "--weights", "none", "--images", "16",
         "--tap", "relu", "--estimator", "channel", "--out", str(tmp_path / "prof")],
        ["select", str(tmp_path / "prof"), "--strategy", "entropy", "--rule", "budget:0.3",
         "--out", str(tmp_path / "sel")],
    ]
    summaries = []
    for args in runs:
        proc = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summaries.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert summaries[0]["profile"] == str(tmp_path / "prof" / "profile.json")
    assert (summaries[0]["tap"], summaries[0]["estimator"], summaries[0]["num_images"]) == ("relu", "channel", 16)
    sel = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert summaries[1]["trainable_params"] == sel["trainable_params"]
    assert sel["rule"] == "budget:0.3" and sel["tap"] == "relu"
    assert sel["trainable_params"] - 2_052 <= 0.3 * (11_178_564 - 2_052)
    assert "selected" in proc.stderr and "layer4.1.conv2" in proc.stderr  # the layer table


def test_the_entropy_figure_draws_each_stages_mean_for_a_stage_rule_and_one_mean_otherwise():
    layers = [{"name": n, "entropy": e, "entropy_std": 0.0} for n, e in (("a.0", 1.0), ("a.1", 3.0), ("b.0", 5.0))]
    stages = {"a.0": "a", "a.1": "a", "b.0": "b"}

    def dashed(fig):
        return [list(line.get_ydata()) for line in fig.axes[0].lines if line.get_linestyle() == "--"]

    assert dashed(plots.entropy_figure(layers, selected={"a.0"}, stages=stages)) == [[2.0, 2.0, 2.0, 2.0, 5.0, 5.0]]
    assert dashed(plots.entropy_figure(layers, selected={"a.0"})) == [[3.0, 3.0]]

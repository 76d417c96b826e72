"""Entropy profiling: the estimators on layers with known activation distributions, taps, determinism,
and the one-pass histogram estimator (fine counts, rebinning) against the exact two-pass definition."""

from __future__ import annotations

import math
import zipfile

import pytest
import torch
from torch import nn

from entropy_ft.data.loader import to_model_input
from entropy_ft.model.factory import build_model, conv_layers, measure_backbone
from entropy_ft.selection import entropy
from entropy_ft.selection.entropy import TapPoint, entropy_bits, profile_entropy, rebin, tap_points
from entropy_ft.selection.rules import Rule, select_by_entropy
from entropy_ft.selection.stability import bootstrap_indices
from entropy_ft.tracking.serving import model_pixels


def _identity_conv(channels: int = 1) -> nn.Sequential:
    """A 1x1 conv that passes its input through, so the test controls the activations exactly."""
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(conv)


def _profile(model, batches, **kw):
    return profile_entropy(model, {"0": TapPoint("0", relu=False)}, batches, **kw)[0]


def _exact_entropy(model, taps, batches, bins: int) -> dict[str, tuple[float, float]]:
    """The definition, computed directly from stored activations: one range per layer over
    all batches, floor((x - lo) / width * bins) in float64, per-batch entropies, weighted mean and std."""
    modules = dict(model.named_modules())
    stored = {name: [] for name in taps}

    def keep(name, relu):
        return lambda _m, _i, out: stored[name].append((torch.relu(out) if relu else out).double().clone())

    handles = [modules[tp.module].register_forward_hook(keep(name, tp.relu)) for name, tp in taps.items()]
    with torch.inference_mode():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    weights = torch.tensor([len(x) for x in batches], dtype=torch.float64) / sum(len(x) for x in batches)
    exact = {}
    for name, acts in stored.items():
        lo, hi = min(a.min() for a in acts), max(a.max() for a in acts)
        idx = [((a - lo) / (hi - lo) * bins).floor().clamp(max=bins - 1).long().flatten() for a in acts]
        h = torch.stack([entropy_bits(torch.bincount(i, minlength=bins)) for i in idx])
        mean = float((weights * h).sum())
        exact[name] = (mean, float((weights * (h - mean) ** 2).sum().sqrt()))
    return exact


def test_entropy_bits_of_known_histograms():
    counts = torch.tensor([[4, 4, 4, 4], [16, 0, 0, 0], [8, 8, 0, 0]])
    assert entropy_bits(counts).tolist() == pytest.approx([2.0, 0.0, 1.0])


@pytest.mark.parametrize("estimator", ["histogram", "channel"])
def test_constant_layer_has_zero_entropy(estimator):
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(0.7)
    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    result = _profile(nn.Sequential(conv), batches, bins=64, estimator=estimator)
    assert result.entropy == 0.0
    assert result.entropy_std == 0.0
    assert result.normalized_entropy == 0.0


@pytest.mark.parametrize("bins", [16, 256])
def test_uniform_activations_reach_log2_bins(bins):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(8, 1, 64, 64, generator=gen) for _ in range(2)]
    result = _profile(_identity_conv(), batches, bins=bins)
    assert result.entropy == pytest.approx(math.log2(bins), rel=0.01)
    assert result.normalized_entropy == pytest.approx(1.0, rel=0.01)


def test_range_is_fixed_over_all_images_and_batches_are_averaged():
    """Batch 1 spans [0, 1], batch 2 spans [0, 2]: with one range [0, 2] for both, batch 1
    fills only half of the bins (1 bit less), so mean and std over batches show it."""
    gen = torch.Generator().manual_seed(0)
    narrow = torch.rand(8, 1, 64, 64, generator=gen)
    wide = 2 * torch.rand(8, 1, 64, 64, generator=gen)
    result = _profile(_identity_conv(), [narrow, wide], bins=64)
    assert result.entropy == pytest.approx(5.5, abs=0.02)
    assert result.entropy_std == pytest.approx(0.5, abs=0.02)


def test_batches_weigh_by_their_size():
    gen = torch.Generator().manual_seed(0)
    narrow = torch.rand(24, 1, 32, 32, generator=gen)  # 6 bits of 7 over the shared range
    wide = 2 * torch.rand(8, 1, 32, 32, generator=gen)  # 7 bits
    result = _profile(_identity_conv(), [narrow, wide], bins=128)
    assert result.entropy == pytest.approx(0.75 * 6 + 0.25 * 7, abs=0.03)


def test_channel_and_histogram_agree_on_one_channel():
    """On one channel both estimators define the same histogram; ``channel`` counts it in two
    exact passes, ``histogram`` in one pass through fine per-batch bins (module docstring)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 3))
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    hist = _profile(model, batches, bins=100, estimator="histogram")
    chan = _profile(model, batches, bins=100, estimator="channel")
    assert 3.0 < hist.entropy < math.log2(100)
    assert chan.entropy == pytest.approx(hist.entropy, abs=1e-3)
    assert chan.entropy_std == pytest.approx(hist.entropy_std, abs=1e-3)


def test_channel_estimator_uses_each_channels_own_range():
    """Two uniform channels on [0, 1] and [10, 11]: each fills all of its own bins, while
    one shared histogram over [0, 11] leaves most bins between them empty."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 2, 64, 64, generator=gen)
    x[:, 1] += 10
    chan = _profile(_identity_conv(2), [x], bins=64, estimator="channel")
    hist = _profile(_identity_conv(2), [x], bins=64, estimator="histogram")
    assert chan.entropy == pytest.approx(6.0, rel=0.01)
    assert hist.entropy < 4.5


def test_relu_tap_reads_rectified_output_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 4, "none")
    model.eval()
    x = [torch.randn(2, 3, 32, 32)]
    with torch.inference_mode():
        expected = model(x[0])
    taps = tap_points(model, "resnet18", "relu")
    relu = profile_entropy(model, taps, x, bins=32)
    bn = profile_entropy(model, tap_points(model, "resnet18", "bn"), x, bins=32)
    with torch.inference_mode():
        assert torch.equal(model(x[0]), expected)  # hooks removed, in-place ReLUs undisturbed
    # after ReLU about half the activations collapse into the zero bin: less entropy than before it
    assert all(r.entropy < b.entropy for r, b in zip(relu, bn))


def test_tap_points_follow_conv_bn_pairs():
    model, _ = build_model("resnet18", 4, "none")
    bn = tap_points(model, "resnet18", "bn")
    assert list(bn) == conv_layers(model, "resnet18")
    assert bn["conv1"] == TapPoint("bn1", relu=False)
    assert bn["layer2.0.downsample.0"] == TapPoint("layer2.0.downsample.1", relu=False)
    assert tap_points(model, "resnet18", "relu")["layer1.0.conv2"] == TapPoint("layer1.0.bn2", relu=True)
    squeeze, _ = build_model("squeezenet1_1", 4, "none")
    # no BatchNorm in SqueezeNet: the conv itself is read, rectified for the relu tap
    assert tap_points(squeeze, "squeezenet1_1", "bn")["features.0"] == TapPoint("features.0", relu=False)
    assert tap_points(squeeze, "squeezenet1_1", "relu")["features.0"] == TapPoint("features.0", relu=True)


@pytest.mark.parametrize("estimator", ["histogram", "channel"])
def test_squeezenet_relu_tap_matches_its_inplace_relu_modules(estimator):
    """The hook on the conv sees the output before the in-place ReLU overwrites it; with
    relu applied in the hook it must equal reading the ReLU module itself."""
    torch.manual_seed(0)
    model, _ = build_model("squeezenet1_1", 4, "none")
    x = [torch.randn(2, 3, 64, 64)]
    via_conv = profile_entropy(model, {"features.0": TapPoint("features.0", relu=True)}, x, 64, estimator)
    via_module = profile_entropy(model, {"features.0": TapPoint("features.1", relu=False)}, x, 64, estimator)
    assert via_conv[0].entropy == pytest.approx(via_module[0].entropy, abs=1e-12)


def test_a_bootstrap_resample_is_the_estimator_on_the_batches_it_draws():
    """Resample r equals profiling the batches it draws, repeats included, directly: over their own range."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 1, 6, 6, generator=g) * scale for n, scale in ((3, 1.0), (2, 3.0), (4, 0.5), (1, 2.0))]
    model = _identity_conv()
    got = _profile(model, batches, bootstrap=6, seed=1)
    assert len(got.resampled) == 6 and len({round(h, 9) for h in got.resampled}) > 1
    for h, draw in zip(got.resampled, bootstrap_indices(len(batches), 6, seed=1)):
        assert h == pytest.approx(_profile(model, [batches[i] for i in draw]).entropy, abs=1e-9)
    assert _profile(model, batches).resampled == ()


@pytest.mark.parametrize(("kw", "count", "problem"), [
    ({"estimator": "channel"}, 4, "channel estimator with 256 bins"),
    ({"bins": 8192}, 4, "histogram estimator with 8192 bins"),
    ({}, 1, "at least 2 batches, got 1"),
])
def test_only_one_pass_profiles_of_several_batches_resample(kw, count, problem):
    batches = [torch.randn(2, 1, 4, 4) for _ in range(count)]
    with pytest.raises(ValueError, match=f"bootstrap: .*{problem}"):
        _profile(_identity_conv(), batches, bootstrap=3, **kw)


def test_profiling_is_deterministic():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 4, "none")
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(2)]
    taps = tap_points(model, "resnet18", "conv")
    first = profile_entropy(model, taps, batches, estimator="channel")
    second = profile_entropy(model, taps, batches, estimator="channel")
    assert first == second
    assert len({r.entropy for r in first}) > 1


def test_histogram_reads_the_batches_once_and_channel_refuses_an_iterator():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(8, 1, 32, 32, generator=gen) for _ in range(2)]
    once = _profile(_identity_conv(), iter(batches), bins=32)
    assert once == _profile(_identity_conv(), batches, bins=32)
    with pytest.raises(TypeError, match="twice"):
        _profile(_identity_conv(), iter(batches), estimator="channel")


def test_histogram_with_more_bins_than_fine_counts_afford_takes_two_exact_passes():
    """Above 4096 bins the one-pass fine counts would cost megabytes per layer and batch:
    the estimator runs twice over the batches and gives the exact definition."""
    model = _identity_conv()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 1, 64, 64, generator=gen), 3 * torch.randn(8, 1, 64, 64, generator=gen)]
    taps = {"0": TapPoint("0", relu=False)}
    (result,) = profile_entropy(model, taps, batches, bins=8192)
    assert len(forwards) == 2 * len(batches)
    mean, std = _exact_entropy(model, taps, batches, 8192)["0"]
    # exact up to float32 rounding of a few values on bin edges (the reference bins in float64)
    assert result.entropy == pytest.approx(mean, abs=1e-5)
    assert result.entropy_std == pytest.approx(std, abs=1e-5)
    forwards.clear()
    profile_entropy(model, taps, batches, bins=4096)
    assert len(forwards) == len(batches)


@pytest.mark.parametrize("estimator", ["histogram", "channel"])
def test_non_finite_activations_are_refused_naming_the_layer(estimator):
    x = torch.rand(2, 1, 8, 8)
    x[1, 0, 3, 3] = math.inf
    with pytest.raises(ValueError, match=r"non-finite activations: \['0'\]"):
        _profile(_identity_conv(), [torch.rand(2, 1, 8, 8), x], estimator=estimator)
    x[1, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        _profile(_identity_conv(), [x], estimator=estimator)


# ---------------------------------------------------------------- one pass: fine counts and rebinning


def test_rebin_of_a_batch_on_the_global_range_sums_its_fine_bins_exactly():
    counts = torch.randint(0, 1000, (1, 16 * 8), generator=torch.Generator().manual_seed(0))
    got = rebin(counts, torch.tensor([-1.0]), torch.tensor([3.0]), 16)
    assert torch.equal(got, counts.view(16, 8).sum(dim=1, keepdim=True).T.double())


def test_rebin_splits_only_fine_bins_that_straddle_a_global_edge():
    """Batch 1 spans [0, 1] in 4 fine bins of width 0.25; batch 2 widens the range to
    [0, 1.5], so the 2 global bins have edges 0, 0.75, 1.5. Batch 1's fine bin [0.5, 0.75]
    lies below 0.75 and [0.75, 1] above it: nothing is split. Batch 2 spans [0.5, 1.5]
    in bins of 0.25: its fine bin [0.5, 0.75] lies below 0.75, all else above it."""
    counts = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = rebin(counts, torch.tensor([0.0, 0.5]), torch.tensor([1.0, 1.5]), 2)
    assert got.tolist() == [[6.0, 4.0], [5.0, 21.0]]
    # a range of [0, 1.2] puts the edge at 0.6: [0.5, 1] in fine bins of 0.125 has its
    # first, [0.5, 0.625], split 0.8 : 0.2 across it
    got = rebin(torch.tensor([[0, 0, 0, 0], [10, 0, 0, 0]]), torch.tensor([0.0, 0.5]), torch.tensor([1.2, 1.0]), 2)
    assert got[1].tolist() == pytest.approx([8.0, 2.0])


def test_rebin_puts_a_constant_batch_in_the_one_bin_holding_its_value():
    counts = torch.tensor([[4, 4, 4, 4], [10, 0, 0, 0], [7, 0, 0, 0], [3, 0, 0, 0]])
    lo = torch.tensor([0.0, 0.6, 1.0, 0.0])
    hi = torch.tensor([1.0, 0.6, 1.0, 0.0])
    got = rebin(counts, lo, hi, 5)  # global edges 0, 0.2, ..., 1
    assert got[1].tolist() == [0, 0, 0, 10, 0]  # 0.6 sits on an edge: the bin above it, as floor() puts it
    assert got[2].tolist() == [0, 0, 0, 0, 7]  # the global max: the last bin
    assert got[3].tolist() == [3, 0, 0, 0, 0]
    assert got.sum(dim=1).tolist() == [16, 10, 7, 3]


def test_rebin_of_a_constant_layer_is_one_bin():
    got = rebin(torch.tensor([[5, 0, 0], [9, 0, 0]]), torch.full((2,), 0.7), torch.full((2,), 0.7), 4)
    assert got.tolist() == [[5, 0, 0, 0], [9, 0, 0, 0]]


@pytest.mark.parametrize("values", ["spread", "relu", "constant", "non-finite"])
def test_bin_counts_piece_by_piece_are_the_floor_binning(values, monkeypatch):
    """Binned 3 images at a time through the reused buffers, the counts are those of
    floor((x - lo) / (hi - lo) * bins) with x == hi in the last bin. Raw values binned over
    the range of their ReLU count as the ReLU; NaN and infinity are no error."""
    monkeypatch.setattr(entropy._Scratch, "piece_elements", staticmethod(lambda _device: 3 * 2 * 5 * 5))
    x = torch.randn(8, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    if values == "constant":
        x = torch.full((8, 2, 5, 5), 0.3)
    elif values == "non-finite":
        x[3, 1, 2, 2], x[7, 0, 0, 0] = math.nan, math.inf
    target = torch.relu(x) if values == "relu" else x
    lo, hi = torch.aminmax(target)
    scale = entropy._scale(lo, hi, 64)
    xm = x.permute(entropy._memory_order(x))
    counts = entropy._bin_counts(xm, -lo * scale, scale, 64, None, 64, entropy._Scratch())
    assert counts.dtype == torch.int64 and counts.sum() == x.numel()
    if values == "non-finite":
        return  # meaningless counts (the layer is refused), but no error
    floor = ((target.double() - lo) / torch.where(hi > lo, hi - lo, 1.0) * 64).floor().clamp(max=63).long()
    assert (counts - torch.bincount(floor.flatten(), minlength=64)).abs().sum() <= 2  # float rounding at an edge
    if values == "constant":
        assert counts[0] == x.numel()
    else:
        assert counts[-1] >= 1
    if values == "relu":
        assert counts[0] >= (x <= 0).sum()  # every negative value in bin 0, with the smallest positive ones


# ---------------------------------------------------------------- one pass against the exact definition, on real data


def _mri_batches(kaggle_zip, n: int, size: int, batch_size: int) -> list[torch.Tensor]:
    """``n`` Kaggle MRI training images, evenly over the sorted archive (all four classes), as model input."""
    with zipfile.ZipFile(kaggle_zip) as zf:
        names = [x for x in sorted(zf.namelist()) if x.startswith("Training/") and x.endswith(".jpg")]
        picked = names[:: len(names) // n][:n]
        images = torch.stack([model_pixels(zf.read(x), {"image_size": size}, size) for x in picked])
    return [to_model_input(images[i : i + batch_size], torch.device("cpu")) for i in range(0, n, batch_size)]


@pytest.mark.parametrize("tap", ["conv", "relu"])
def test_one_pass_matches_the_exact_two_pass_definition_on_mri(kaggle_zip, weights_dir, tap):
    """Pretrained ResNet18 on 10 real MRI images (batches of 4, 4, 2): every layer's entropy
    and spread within 0.005 bits of the exact definition, and the same below-mean selection."""
    model, _ = build_model("resnet18", 4, str(weights_dir / "resnet18-imagenette.pt"))
    model = model.to(memory_format=torch.channels_last).eval()
    batches = _mri_batches(kaggle_zip, n=10, size=64, batch_size=4)
    taps = tap_points(model, "resnet18", tap)
    got = {r.name: (r.entropy, r.entropy_std) for r in profile_entropy(model, taps, batches)}
    exact = _exact_entropy(model, taps, batches, 256)
    worst = max(abs(got[n][i] - exact[n][i]) for n in taps for i in (0, 1))
    assert worst < 0.005, worst
    costs = measure_backbone(model, "resnet18").costs
    chosen = select_by_entropy({n: e for n, (e, _) in got.items()}, costs, Rule("below-mean"))
    assert 0 < len(chosen) < len(taps)
    assert chosen == select_by_entropy({n: e for n, (e, _) in exact.items()}, costs, Rule("below-mean"))

"""Entropy profiling: the estimators on layers with known activation distributions, taps, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from entropy_ft.entropy import TapPoint, entropy_bits, profile_entropy, tap_points
from entropy_ft.models import build_model, conv_layers


def _identity_conv(channels: int = 1) -> nn.Sequential:
    """A 1x1 conv that passes its input through, so the test controls the activations exactly."""
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(conv)


def _profile(model, batches, **kw):
    return profile_entropy(model, {"0": TapPoint("0", relu=False)}, batches, **kw)[0]


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
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 3))
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    hist = _profile(model, batches, bins=100, estimator="histogram")
    chan = _profile(model, batches, bins=100, estimator="channel")
    assert 3.0 < hist.entropy < math.log2(100)
    assert chan.entropy == pytest.approx(hist.entropy, abs=1e-9)
    assert chan.entropy_std == pytest.approx(hist.entropy_std, abs=1e-9)


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


def test_squeezenet_relu_tap_matches_its_inplace_relu_modules():
    """The hook on the conv sees the output before the in-place ReLU overwrites it; with
    relu applied in the hook it must equal reading the ReLU module itself."""
    torch.manual_seed(0)
    model, _ = build_model("squeezenet1_1", 4, "none")
    x = [torch.randn(2, 3, 64, 64)]
    via_conv = profile_entropy(model, {"features.0": TapPoint("features.0", relu=True)}, x, bins=64)
    via_module = profile_entropy(model, {"features.0": TapPoint("features.1", relu=False)}, x, bins=64)
    assert via_conv[0].entropy == pytest.approx(via_module[0].entropy, abs=1e-12)


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


def test_an_iterator_of_batches_is_refused():
    with pytest.raises(TypeError, match="iterated twice"):
        _profile(_identity_conv(), iter([torch.rand(1, 1, 4, 4)]))

"""Activation entropy of convolutional layers (DESIGN section 6), read through forward hooks.

The entropy of a layer is the Shannon entropy, in bits, of the histogram of its output
activations over the profiling images, with ``bins`` equal-width bins over a range fixed
in a first pass over all images. Two passes are needed because a per-batch range would
make batches incomparable: a batch with a narrow spread would look as "uniform" as a
wide one. The second pass counts each batch on its own and gives one entropy per batch;
a layer's ``entropy`` is their mean (weighted by batch size, so a short last batch does
not count as much as a full one) and ``entropy_std`` their standard deviation.

Estimators:
- ``histogram``: one histogram over all of a layer's activations (all channels together).
- ``channel``: one histogram per output channel, each over that channel's own range;
  the layer's entropy is the mean of the channel entropies. It is insensitive to
  channels living at different scales, which dominate a single shared histogram.

Tap points (where the activations are read, ``tap``):
- ``conv``: the convolution's output.
- ``bn``: the output of the BatchNorm that directly follows the conv.
- ``relu``: ``relu`` applied to that BatchNorm output, inside the hook. ReLU modules are
  never hooked: ResNet shares one ReLU module between the convs of a block and applies
  it after the residual sum, so its output does not belong to one conv. Applying the
  ReLU functionally gives every conv its own rectified response, the same definition
  for downsample convs (which have no ReLU of their own) as for the others.
SqueezeNet has no BatchNorm: there ``bn`` reads the conv output (an identity BN) and
``relu`` equals the output of the in-place ReLU module that follows each conv. Hooks run
before that in-place ReLU and read the values synchronously, so it cannot alter them.

Everything is computed on the model's device under ``torch.inference_mode()``: ranges
with ``amin``/``amax``, counts with integer ``bincount`` (exact and deterministic on CPU
and CUDA, unlike float-atomic ``histc``), entropies as tensors; the host syncs once per
layer between the passes and once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .logs import progress
from .models import conv_bn_pairs, conv_layers

ESTIMATORS = ("histogram", "channel")
TAPS = ("conv", "bn", "relu")


@dataclass(frozen=True)
class TapPoint:
    """Where one conv layer's activations are read."""

    module: str  # name of the module whose forward output is hooked
    relu: bool  # apply ReLU to that output before counting


@dataclass(frozen=True)
class LayerEntropy:
    name: str
    entropy: float  # bits, mean over batches
    entropy_std: float  # bits, standard deviation over batches
    normalized_entropy: float  # entropy / log2(bins), in [0, 1]


def tap_points(model: nn.Module, arch: str, tap: str) -> dict[str, TapPoint]:
    """Tap point of every backbone conv (forward order) for ``tap`` in conv|bn|relu."""
    if tap not in TAPS:
        raise ValueError(f"unknown tap {tap!r}")
    layers = conv_layers(model, arch)
    if tap == "conv":
        return {name: TapPoint(name, relu=False) for name in layers}
    pairs = conv_bn_pairs(model)
    return {name: TapPoint(pairs.get(name, name), relu=tap == "relu") for name in layers}


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of each row of a histogram (last dim = bins); empty bins add 0."""
    p = counts.double() / counts.sum(dim=-1, keepdim=True).double()
    return -torch.special.xlogy(p, p).sum(dim=-1) / math.log(2.0)


class _LayerReader:
    """Forward hook for one layer: tracks the range in pass 1, per-batch entropy in pass 2."""

    def __init__(self, relu: bool, bins: int, per_channel: bool) -> None:
        self.relu = relu
        self.bins = bins
        self.per_channel = per_channel
        self.lo: torch.Tensor | None = None  # broadcastable to the activations: (1,1,1,1) or (1,C,1,1)
        self.hi: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None  # bins per unit of activation, fixed after pass 1
        self.shift: torch.Tensor | None = None  # -lo * scale: bin position = x * scale + shift
        self.offset: torch.Tensor | None = None  # first bin index of each group in the flat count vector
        self.counting = False
        self.batch_entropy: list[torch.Tensor] = []

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        x = F.relu(output) if self.relu else output
        x = x.float()
        if self.counting:
            self.batch_entropy.append(entropy_bits(self._counts(x)).mean())
        else:
            self._widen(x)

    def _reduce_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(d for d in range(x.ndim) if not (self.per_channel and d == 1))

    def _widen(self, x: torch.Tensor) -> None:
        dims = self._reduce_dims(x)
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def freeze_range(self) -> bool:
        """End of pass 1: fix the bin edges; False when activations were not finite."""
        assert self.lo is not None and self.hi is not None, "layer never ran in the first pass"
        finite = bool(torch.isfinite(self.lo).all() and torch.isfinite(self.hi).all())
        # a constant group gets a unit-wide range: everything lands in bin 0 and H = 0
        width = torch.where(self.hi > self.lo, self.hi - self.lo, torch.ones_like(self.hi))
        self.scale = self.bins / width
        self.shift = -self.lo * self.scale
        groups = self.lo.numel()
        self.offset = (torch.arange(groups, device=self.lo.device, dtype=torch.int32) * self.bins).view(self.lo.shape)
        self.counting = True
        return finite

    def _counts(self, x: torch.Tensor) -> torch.Tensor:
        """(groups, bins) integer counts of this batch: one group, or one per channel.

        Bin index = floor((x - lo) * scale), clamped to the last bin for x == hi (truncation
        after clamping to [0, bins - 1] is the floor). The tensors are viewed in memory
        order first (channels_last is NHWC in memory), so flattening for ``bincount`` is
        free instead of a copy of the whole activation.
        """
        order = sorted(range(x.ndim), key=lambda d: -x.stride(d))
        x, shift, scale, offset = (t.permute(order) for t in (x, self.shift, self.scale, self.offset))
        idx = torch.addcmul(shift, x, scale).clamp_(0, self.bins - 1).to(torch.int32)
        if self.per_channel:
            idx += offset
        groups = self.lo.numel()
        return torch.bincount(idx.reshape(-1), minlength=groups * self.bins).view(groups, self.bins)

    def result(self, name: str, weights: torch.Tensor) -> LayerEntropy:
        h = torch.stack(self.batch_entropy).cpu().double()
        mean = float((weights * h).sum())
        std = float((weights * (h - mean) ** 2).sum().sqrt())
        return LayerEntropy(name, mean, std, mean / math.log2(self.bins))


def profile_entropy(
    model: nn.Module,
    taps: Mapping[str, TapPoint],
    batches: Iterable[torch.Tensor],
    bins: int = 256,
    estimator: str = "histogram",
) -> list[LayerEntropy]:
    """Entropy of each layer in ``taps`` (in its order) over ``batches`` of model input.

    ``batches`` is iterated twice (ranges, then counts), so it must be a re-iterable
    collection such as a list or a DataLoader, already on the model's device. The model
    runs in eval mode (BatchNorm with its running statistics) and is left in the mode it
    came in.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}")
    if bins < 2:
        raise ValueError(f"need at least 2 bins, got {bins}")
    if iter(batches) is batches:
        raise TypeError("batches is iterated twice; pass a list or a DataLoader, not an iterator")
    hooked = [tp.module for tp in taps.values()]
    if len(set(hooked)) != len(hooked):
        raise ValueError(f"two layers read the same module: {hooked}")
    modules = dict(model.named_modules())
    readers = {name: _LayerReader(tp.relu, bins, estimator == "channel") for name, tp in taps.items()}
    handles = [modules[taps[name].module].register_forward_hook(reader) for name, reader in readers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _run(model, batches, "entropy: ranges")
            bad = [name for name, reader in readers.items() if not reader.freeze_range()]
            if bad:
                raise ValueError(f"layers produced non-finite activations: {bad[:5]}")
            sizes = _run(model, batches, "entropy: histograms")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    weights = torch.tensor(sizes, dtype=torch.float64)
    weights /= weights.sum()
    return [reader.result(name, weights) for name, reader in readers.items()]


def _run(model: nn.Module, batches: Iterable[torch.Tensor], desc: str) -> list[int]:
    """One forward pass over all batches (hooks do the work); returns the batch sizes."""
    sizes = []
    for x in progress(batches, desc=desc, total=_len(batches), unit="batch"):
        model(x)
        sizes.append(x.shape[0])
    if not sizes:
        raise ValueError("no profiling images")
    return sizes


def _len(batches: Iterable) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None

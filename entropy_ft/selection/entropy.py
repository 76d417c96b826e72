"""Activation entropy of convolutional layers, read through forward hooks.

The entropy of a layer is the Shannon entropy, in bits, of the histogram of its output
activations, with ``bins`` equal-width bins over the layer's range over all profiling
images. One range for all images is needed because a per-batch range would make batches
incomparable: a batch with a narrow spread would look as "uniform" as a wide one. Each
batch is counted on its own and gives one entropy; a layer's ``entropy`` is their mean
(weighted by batch size, so a short last batch does not count as much as a full one) and
``entropy_std`` their standard deviation.

Estimators:
- ``histogram``: one histogram over all of a layer's activations (all channels together).
  One forward pass: the range over all images is only known at the end, so each batch is
  counted into ``bins * REFINE`` fine bins over its own [min, max], and at the end
  :func:`rebin` moves every batch's fine counts onto the ``bins`` bins of the layer's range
  (the union of the batch ranges). That range contains each batch's, so a fine bin is at
  most 1/REFINE of a final bin wide: a fine bin that falls inside one final bin goes there
  whole, and only one straddling a final bin edge (at most ``bins - 1`` of the
  ``bins * REFINE``) is split, evenly by width. Only the placement of values inside those
  few straddling fine bins is approximated; on the shared ResNet18 and SqueezeNet weights
  over Kaggle MRI images the per-layer entropy stays within 0.001 bits of two exact passes
  and the below-mean selection is the same (``tests/test_entropy.py`` checks it against an
  exact reference). It costs ``bins * REFINE`` int64 counts per layer and batch (32 KB
  at the default 256 bins) and one forward pass instead of two: a second pass would cost
  as much as the plain inference it follows. Above MAX_FINE_BINS fine bins (more than
  4096 bins) those counts would grow to megabytes per layer and batch, and fewer fine bins
  per bin would lose the accuracy, so there the estimator takes the two exact passes.
- ``channel``: one histogram per output channel, each over that channel's own range;
  the layer's entropy is the mean of the channel entropies. It is insensitive to
  channels living at different scales, which dominate a single shared histogram. It
  keeps two exact passes (each channel's range, then counts): fine counts per channel
  (channels x bins x REFINE per batch, over a million for a 512-channel layer) would cost
  more memory than the second pass costs time.

Tap points (where the activations are read, ``tap``):
- ``conv``: the convolution's output.
- ``bn``: the output of the BatchNorm that directly follows the conv.
- ``relu``: ``relu`` of that BatchNorm output, taken by the hook. ReLU modules are
  never hooked: ResNet shares one ReLU module between the convs of a block and applies
  it after the residual sum, so its output does not belong to one conv. Applying the
  ReLU functionally gives every conv its own rectified response, the same definition
  for downsample convs (which have no ReLU of their own) as for the others.
SqueezeNet has no BatchNorm: there ``bn`` reads the conv output (an identity BN) and
``relu`` equals the output of the in-place ReLU module that follows each conv. Hooks run
before that in-place ReLU and read the values synchronously, so it cannot alter them.

Everything is computed on the model's device under ``torch.inference_mode()``: ranges with
``aminmax``, counts with integer ``bincount`` (exact and deterministic on CPU and CUDA,
unlike float-atomic ``histc``), entropies as tensors. The hooks' own arithmetic never
waits for the host (CUDA's ``bincount`` does read its index range back), and the results
come back once per layer at the end. A hook's cost is what profiling adds to the
plain inference pass, so it reads the activations in memory order, a few images at a time
through buffers reused across layers and batches (:class:`_Scratch`), and never applies the
ReLU of the ``relu`` tap: it bins the raw output over the ReLU's range, where everything
below zero lands in bin 0 as its ReLU would.

Bootstrap (``bootstrap`` resamples, for the stability of a selection,
:mod:`entropy_ft.selection.stability`): the unit resampled with replacement is the batch. A
batch's entropy is that of the histogram pooled over its images, which is not a sum or mean of
per-image parts (pooling different images adds entropy), so an image cannot be a unit without
changing what is measured; a batch is the smallest unit whose contribution the estimator
already keeps. It needs exchangeable batches: the profile step feeds the images in a seeded
random order (:func:`entropy_ft.data.sample.batch_order`); in the dataset's row order each
batch would hold one class, and resampling batches would resample the class mix. The same
draws of batches serve every layer, since a resample stands for one other sample of images.
A resample is computed exactly as the one-pass estimator would compute it on the batches it
draws: their kept fine counts are rebinned onto the resample's own range (the union of its
batches' ranges). That range matters most: on the shared ResNet18 weights over 256 Kaggle MRI
images, resamples that keep the full sample's range and only reweight the batch entropies
spread a layer's entropy (relative to the mean over layers) by a tenth of what ten other
samples of images do, while resamples over their own range reach about 0.85 of it. Their
duplicated batches narrow the range a little, so resampled entropies sit a few hundredths of a
bit above the profile's. The two-pass estimators keep no per-batch counts that could move to
another range, so they do not resample (:func:`bootstrap_problem`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from entropy_ft.logs import progress
from entropy_ft.model.factory import conv_bn_pairs, conv_layers
from entropy_ft.selection.stability import bootstrap_indices

ESTIMATORS = ("histogram", "channel")
TAPS = ("conv", "bn", "relu")
REFINE = 16  # fine bins per final bin in the one-pass histogram estimator (module docstring)
MAX_FINE_BINS = 2**16  # more fine bins per layer and batch than this: two exact passes instead


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
    resampled: tuple[float, ...] = ()  # bits, the entropy on each bootstrap resample of the batches


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


def rebin(counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Fine per-batch histograms, each over its batch's own range, as ``bins`` bins over the union of the ranges.

    ``counts`` is (batches, fine): batch b counted into ``fine`` equal-width bins over
    [lo[b], hi[b]] (its own min and max). The result is (batches, bins) float64: the counts in
    ``bins`` equal-width bins over [min(lo), max(hi)], read off the cumulative count of each
    batch at the global bin edges, linear within a fine bin (a fine bin's mass is spread
    evenly over its width). A fine bin that lies inside one global bin goes there whole; only
    one straddling a global edge is split, in proportion to its overlap with each side.

    Degenerate cases follow the exact binning (bin = floor((x - lo) / width * bins), x at
    the top in the last bin): a constant batch is a point mass, entirely in the global bin
    that holds its value; a constant layer gets a unit-wide range, so all of it lands in
    bin 0 and H = 0.
    """
    counts, lo, hi = counts.double(), lo.double(), hi.double()
    fine = counts.shape[1]
    glo, ghi = lo.min(), hi.max()
    width = torch.where(ghi > glo, ghi - glo, torch.ones_like(ghi))
    edges = glo + width * torch.arange(bins + 1, dtype=torch.float64, device=counts.device) / bins
    lo, step = lo[:, None], ((hi - lo) / fine)[:, None]
    spread = step > 0
    # position of every global edge in each batch's fine bins; a point mass is all above
    # the edges below or at it, all below those above it
    pos = torch.where(spread, (edges - lo) / torch.where(spread, step, 1.0), torch.where(edges > lo, fine, 0.0))
    pos = pos.clamp_(0, fine)
    pos[:, -1] = fine  # everything is below the top edge, the global max included
    k = pos.floor().long().clamp_(max=fine - 1)
    below = F.pad(counts.cumsum(dim=1), (1, 0)).gather(1, k) + (pos - k) * counts.gather(1, k)
    return below.diff(dim=1)


class _Scratch:
    """Float32 and int32 buffers, reused by every layer and batch, for binning a batch a few
    images at a time.

    Binning writes a bin position and an index per activation. Fresh tensors for them would
    cost more than the arithmetic on CPU, where every large allocation comes back as new pages
    that fault in on first write; pieces of about a million activations also stay in cache.
    On a GPU the pieces are larger, as kernel launches, not allocations, are what costs there.
    """

    def __init__(self) -> None:
        self.pos = torch.empty(0)
        self.idx = torch.empty(0, dtype=torch.int32)

    @staticmethod
    def piece_elements(device: torch.device) -> int:
        return 2**20 if device.type == "cpu" else 2**24

    def views(self, shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(position, index) buffers of ``shape``, grown on first need."""
        n = math.prod(shape)
        if self.pos.numel() < n or self.pos.device != device:
            self.pos = torch.empty(n, device=device)
            self.idx = torch.empty(n, dtype=torch.int32, device=device)
        return self.pos[:n].view(shape), self.idx[:n].view(shape)


def _bin_counts(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    bins: int,
    offset: torch.Tensor | None,
    total: int,
    scratch: _Scratch,
) -> torch.Tensor:
    """(total,) int64 counts of the bin indices clamp(trunc(x * scale + shift), 0, bins - 1)
    (+ ``offset``, the first bin of each channel's histogram, when there are several).

    ``x`` is viewed in memory order (dimension 0 outermost) and ``shift``, ``scale`` and
    ``offset`` broadcast to it. Converting to integers before clamping is the floor on the
    range [lo, hi] (``x == hi`` lands on ``bins`` and is clamped into the last bin), puts
    anything below ``lo`` in bin 0 (so raw values binned over a ReLU's range count as their
    ReLU) and keeps NaNs, which convert to an arbitrary integer, inside the histogram instead
    of failing ``bincount``. Integer ``bincount`` is exact, and deterministic on CUDA, unlike
    float-atomic ``histc``.
    """
    counts = torch.zeros(total, dtype=torch.int64, device=x.device)
    per_image = max(1, math.prod(x.shape[1:]))
    for piece in x.split(max(1, _Scratch.piece_elements(x.device) // per_image)):
        pos, idx = scratch.views(piece.shape, x.device)
        torch.addcmul(shift, piece, scale, out=pos)
        idx.copy_(pos).clamp_(0, bins - 1)
        if offset is not None:
            idx += offset
        counts += torch.bincount(idx.view(-1), minlength=total)
    return counts


def _memory_order(x: torch.Tensor) -> list[int]:
    """The dimensions of ``x`` from the outermost in memory: channels_last is NHWC in memory,
    and binning it permuted to this order reads it straight through, flat views included,
    instead of copying it."""
    return sorted(range(x.ndim), key=lambda d: -x.stride(d))


def _relu_range(lo: torch.Tensor, hi: torch.Tensor, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of relu(x) from that of x. The ReLU itself is never applied: binning clamps
    everything below the range into bin 0, where relu(x) = 0 lands."""
    return (lo.clamp(min=0), hi.clamp(min=0)) if relu else (lo, hi)


def _scale(lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Bins per unit of activation over [lo, hi]; a constant range gets unit width, so all of it lands in bin 0."""
    return bins / torch.where(hi > lo, hi - lo, torch.ones_like(hi))


class _BatchHistograms:
    """Forward hook of the one-pass ``histogram`` estimator: per batch, its range and a fine
    histogram over that range, kept on the device until :func:`rebin` puts all batches on
    the layer's global range."""

    def __init__(self, relu: bool, bins: int, scratch: _Scratch) -> None:
        self.relu = relu
        self.bins = bins
        self.scratch = scratch
        self.ranges: list[torch.Tensor] = []  # per batch: (2,) min, max
        self.counts: list[torch.Tensor] = []  # per batch: (bins * REFINE,) int64

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        x = output.float().permute(_memory_order(output))
        lo, hi = _relu_range(*torch.aminmax(x), self.relu)
        fine = self.bins * REFINE
        scale = _scale(lo, hi, fine)
        self.ranges.append(torch.stack((lo, hi)))
        self.counts.append(_bin_counts(x, -lo * scale, scale, fine, None, fine, self.scratch))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.stacked[0]).all())

    @functools.cached_property
    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batches, 2) ranges and (batches, bins * REFINE) fine counts, once all batches have run."""
        return torch.stack(self.ranges), torch.stack(self.counts)

    def batch_entropy(self) -> torch.Tensor:
        return self.drawn_entropy(torch.arange(len(self.counts)))

    def drawn_entropy(self, draw: torch.Tensor) -> torch.Tensor:
        """Entropies of the batches ``draw`` picks, binned over the range of those batches alone:
        the estimator run on that resample (all batches in order: the profile itself)."""
        ranges, counts = self.stacked
        draw = draw.to(counts.device)
        lo, hi = ranges[draw].unbind(dim=1)
        return entropy_bits(rebin(counts[draw], lo, hi, self.bins))


class _TwoPassReader:
    """Forward hook of the exact two-pass estimators: the range in pass 1, per-batch
    entropies of the histograms over that range in pass 2; one histogram per channel
    (``channel``) or one per layer (``histogram`` above MAX_FINE_BINS)."""

    def __init__(self, relu: bool, bins: int, scratch: _Scratch, per_channel: bool) -> None:
        self.relu = relu
        self.bins = bins
        self.scratch = scratch
        self.per_channel = per_channel
        self.lo: torch.Tensor | None = None  # (1, C, 1, 1) or (1, 1, 1, 1), in the output's dimension order
        self.hi: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None  # bins per unit of activation, fixed after pass 1
        self.shift: torch.Tensor | None = None  # -lo * scale: bin position = x * scale + shift
        self.offset: torch.Tensor | None = None  # first bin index of each channel in the flat count vector
        self.counting = False
        self.batch_entropies: list[torch.Tensor] = []

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if self.counting:
            self.batch_entropies.append(entropy_bits(self._counts(output)).mean())
        else:
            self._widen(output.float())

    def _widen(self, x: torch.Tensor) -> None:
        dims = tuple(d for d in range(x.ndim) if not (self.per_channel and d == 1))
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def finite(self) -> bool:
        assert self.lo is not None and self.hi is not None, "layer never ran in the first pass"
        return bool(torch.isfinite(self.lo).all() and torch.isfinite(self.hi).all())

    def freeze_range(self) -> None:
        """End of pass 1: fix the bin edges and count from now on."""
        lo, hi = _relu_range(self.lo, self.hi, self.relu)
        self.scale = _scale(lo, hi, self.bins)
        self.shift = -lo * self.scale
        if self.per_channel:
            channels = torch.arange(lo.numel(), device=lo.device, dtype=torch.int32)
            self.offset = (channels * self.bins).view(lo.shape)
        self.counting = True

    def _counts(self, output: torch.Tensor) -> torch.Tensor:
        """(groups, bins) integer counts of this batch: one group, or one per channel."""
        order = _memory_order(output)
        x, shift, scale = (t.permute(order) for t in (output.float(), self.shift, self.scale))
        offset = None if self.offset is None else self.offset.permute(order)
        groups = self.lo.numel()
        return _bin_counts(x, shift, scale, self.bins, offset, groups * self.bins, self.scratch).view(groups, self.bins)

    def batch_entropy(self) -> torch.Tensor:
        return torch.stack(self.batch_entropies)


def bootstrap_problem(estimator: str, bins: int, batches: int) -> str | None:
    """Why the batches of a profile cannot be resampled (module docstring), or None."""
    if estimator != "histogram" or bins * REFINE > MAX_FINE_BINS:
        return (f"the {estimator} estimator with {bins} bins counts over the full sample's range in two passes "
                "and keeps no per-batch counts to rebin onto a resample's range")
    if batches < 2:
        return f"resampling needs at least 2 batches, got {batches}"
    return None


def profile_entropy(
    model: nn.Module,
    taps: Mapping[str, TapPoint],
    batches: Iterable[torch.Tensor],
    bins: int = 256,
    estimator: str = "histogram",
    bootstrap: int = 0,
    seed: int = 0,
) -> list[LayerEntropy]:
    """Entropy of each layer in ``taps`` (in its order) over ``batches`` of model input, and on
    ``bootstrap`` resamples of the batches drawn with ``seed`` (module docstring; a ValueError
    where :func:`bootstrap_problem` finds one).

    ``batches`` must already be on the model's device. The ``histogram`` estimator reads
    them once, so any iterable will do; ``channel``, and ``histogram`` with more than
    MAX_FINE_BINS / REFINE bins, read them twice (ranges, then counts), so they need a
    re-iterable collection such as a list or a DataLoader. The model runs in
    eval mode (BatchNorm with its running statistics) and is left in the mode it came in.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}")
    if bins < 2:
        raise ValueError(f"need at least 2 bins, got {bins}")
    per_channel = estimator == "channel"
    two_pass = per_channel or bins * REFINE > MAX_FINE_BINS
    if two_pass and iter(batches) is batches:
        raise TypeError(
            f"{estimator} with {bins} bins iterates batches twice; pass a list or a DataLoader, not an iterator"
        )
    hooked = [tp.module for tp in taps.values()]
    if len(set(hooked)) != len(hooked):
        raise ValueError(f"two layers read the same module: {hooked}")
    modules = dict(model.named_modules())
    scratch = _Scratch()
    readers = {
        name: (
            _TwoPassReader(tp.relu, bins, scratch, per_channel)
            if two_pass
            else _BatchHistograms(tp.relu, bins, scratch)
        )
        for name, tp in taps.items()
    }
    handles = [modules[taps[name].module].register_forward_hook(r) for name, r in readers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            sizes = _run(model, batches, "entropy: ranges" if two_pass else "entropy")
            bad = [name for name, r in readers.items() if not r.finite()]
            if bad:
                raise ValueError(f"layers produced non-finite activations: {bad[:5]}")
            if two_pass:
                for r in readers.values():
                    r.freeze_range()
                _run(model, batches, "entropy: histograms")
            problem = bootstrap_problem(estimator, bins, len(sizes)) if bootstrap else None
            if problem:
                raise ValueError(f"bootstrap: {problem}")
            draws = torch.from_numpy(bootstrap_indices(len(sizes), bootstrap, seed))
            sizes = torch.tensor(sizes, dtype=torch.float64)
            return [_summary(name, r, sizes, draws, bins) for name, r in readers.items()]
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _summary(
    name: str, reader: _BatchHistograms | _TwoPassReader, sizes: torch.Tensor, draws: torch.Tensor, bins: int
) -> LayerEntropy:  # draws has rows only for a _BatchHistograms reader
    """A layer's entropy: the batch-size-weighted mean of its per-batch entropies, their spread,
    and the same mean on each resample of batches (a row of ``draws``)."""
    h = reader.batch_entropy().cpu().double()
    weights = sizes / sizes.sum()
    mean = float((weights * h).sum())
    std = float((weights * (h - mean) ** 2).sum().sqrt())
    resampled = tuple(float((sizes[d] * reader.drawn_entropy(d).cpu().double()).sum() / sizes[d].sum())
                      for d in draws)
    return LayerEntropy(name, mean, std, mean / math.log2(bins), resampled)


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

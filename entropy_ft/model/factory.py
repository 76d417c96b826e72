"""Architecture factory and pretrained-weight sources.

Models come from torchvision's constructors and weights API with a new head sized for the
dataset's classes. Weights come from ``imagenet`` (torchvision's download and cache), a
local file or ``s3://`` object holding a state_dict, or ``none``. Every failure to load
them is a :class:`UserError` naming the source: a model never silently starts from a
random init when the user asked for pretrained weights.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from entropy_ft import storage
from entropy_ft.errors import UserError
from entropy_ft.model.archs import Backbone, check_arch, check_num_classes, head_module_name

ARCHITECTURES = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights),
    "squeezenet1_0": (tvm.squeezenet1_0, tvm.SqueezeNet1_0_Weights),
    "squeezenet1_1": (tvm.squeezenet1_1, tvm.SqueezeNet1_1_Weights),
}


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's starting weights came from, recorded in every artifact."""

    source: str  # "imagenet", "none", a path or an s3:// URI
    sha256: str | None  # of the state_dict file; None for "none"

    def as_dict(self) -> dict:
        return {"weights": self.source, "weights_sha256": self.sha256}


def head_prefix(arch: str) -> str:
    """State-dict prefix of the classifier head that is replaced for the new classes."""
    return "fc." if check_arch(arch).startswith("resnet") else "classifier."


def build_model(arch: str, num_classes: int, weights: str) -> tuple[nn.Module, WeightsInfo]:
    """A torchvision ``arch`` with a ``num_classes`` head and backbone weights from ``weights``."""
    check_arch(arch)
    check_num_classes(num_classes)
    ctor, _ = ARCHITECTURES[arch]
    model = ctor(weights=None, num_classes=num_classes)
    if weights == "none":
        return model, WeightsInfo("none", None)
    state, sha = _load_state_dict(arch, weights)
    prefix = head_prefix(arch)
    backbone = {k: v for k, v in state.items() if not k.startswith(prefix)}
    expected = {k for k in model.state_dict() if not k.startswith(prefix)}
    missing = sorted(expected - backbone.keys())
    unexpected = sorted(backbone.keys() - expected)
    if missing or unexpected:
        raise UserError(
            f"{weights}: state_dict does not fit {arch}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in backbone.items() if v.shape != own[k].shape]
    if wrong:
        raise UserError(f"{weights}: state_dict does not fit {arch}: shape mismatch in {wrong[:5]}")
    model.load_state_dict(backbone, strict=False)
    return model, WeightsInfo(weights, sha)


def weights_problem(weights: str) -> str | None:
    """Why ``--weights`` names no source this machine can load, or None: ``imagenet``, ``none``, an
    ``s3://`` URI (checked when read) or an existing local file."""
    if weights in ("imagenet", "none") or storage.is_s3(weights) or Path(weights).is_file():
        return None
    return f"--weights {weights}: not 'imagenet', 'none', an existing file or an s3:// URI"


def _load_state_dict(arch: str, weights: str) -> tuple[Mapping[str, torch.Tensor], str]:
    if weights == "imagenet":
        return _imagenet_state_dict(arch)
    if problem := weights_problem(weights):
        raise UserError(problem)
    data = storage.read_bytes(weights)
    return parse_state_dict(data, weights), storage.sha256_bytes(data)


def parse_state_dict(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """Decode a ``.safetensors`` or ``torch.save`` state_dict, refusing anything that is not one."""
    try:
        if source.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            state = load_safetensors(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for corrupt input
        raise UserError(f"{source}: not a readable state_dict ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source}: does not hold a state_dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _imagenet_state_dict(arch: str) -> tuple[Mapping[str, torch.Tensor], str]:
    """torchvision's ImageNet weights through its own download and cache (``TORCH_HOME``)."""
    _, weights_enum = ARCHITECTURES[arch]
    entry = weights_enum.DEFAULT
    try:
        state = entry.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:
        raise UserError(
            f"--weights imagenet: could not download {arch} weights from {entry.url} "
            f"({type(exc).__name__}: {str(exc)[:200]}); on an offline machine pass a state_dict file instead"
        ) from exc
    cached = Path(torch.hub.get_dir(), "checkpoints", os.path.basename(entry.url))
    return state, storage.sha256_file(cached)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def execution_order(model: nn.Module, image_size: int = 64) -> list[str]:
    """Names of leaf modules in the order a forward pass runs them (hooks on a dummy batch)."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def conv_layers(model: nn.Module, arch: str) -> list[str]:
    """Backbone Conv2d names in forward order; the classifier head is not a candidate layer."""
    modules = dict(model.named_modules())
    head = head_module_name(arch)
    seen: list[str] = []
    for name in execution_order(model):
        if isinstance(modules[name], nn.Conv2d) and name != head and name not in seen:
            seen.append(name)
    return seen


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """The BatchNorm that directly follows each conv in forward order (unfrozen and frozen with it)."""
    modules = dict(model.named_modules())
    order = execution_order(model)
    pairs: dict[str, str] = {}
    for prev, name in zip(order, order[1:]):
        conv, bn = modules[prev], modules[name]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
            pairs[prev] = name
    return pairs


def measure_backbone(model: nn.Module, arch: str) -> Backbone:
    """The parameter accounting of a built ``arch`` model, counted on its modules
    (:func:`entropy_ft.model.archs.backbone` gives the same from tables, without torch)."""
    pairs = conv_bn_pairs(model)
    convs = tuple((name, pairs.get(name), count_trainable(model, [name, pairs[name]] if name in pairs else [name]))
                  for name in conv_layers(model, arch))
    head = head_module_name(arch)
    return Backbone(arch, convs, head, count_trainable(model, [head]), count_params(model))


def trainable_module_names(model: nn.Module, arch: str, layers: list[str]) -> list[str]:
    """Modules a selection trains: each selected conv, the BatchNorm right after it, and the head.

    Selecting every conv gives full fine-tuning: in the supported architectures every
    parameter belongs to a conv, its BatchNorm or the head.
    """
    return measure_backbone(model, arch).trainable_modules(layers)


def count_trainable(model: nn.Module, module_names: list[str]) -> int:
    """Parameters in the named modules (what an optimizer over them would update)."""
    modules = dict(model.named_modules())
    return sum(count_params(modules[name]) for name in module_names)

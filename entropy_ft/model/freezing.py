"""Apply a layer selection to a model: what trains, what stays frozen, and where autograd can stop.

Three rules, enforced here and nowhere else:

* only the selection's ``trainable_modules`` (selected convs, the BatchNorm after each, the
  head) have ``requires_grad``; every other parameter is never handed to the optimizer;
* a frozen BatchNorm stays in eval mode during training, so its running statistics (part of
  the pretrained model) never move;
* the frozen prefix of the network (every block that runs before the first trainable
  module) runs under ``torch.no_grad()``: autograd then stores no activations for it and
  the backward pass stops at its end, so freezing early layers saves compute and memory,
  not only optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from entropy_ft.errors import UserError
from entropy_ft.model.factory import check_arch


def apply_selection(model: nn.Module, trainable_modules: Iterable[str]) -> list[nn.Parameter]:
    """Set ``requires_grad`` from the selection and return the trainable parameters in model order."""
    modules = dict(model.named_modules())
    names = list(trainable_modules)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise UserError(f"selection names modules the model does not have: {unknown[:5]}")
    model.requires_grad_(False)
    for name in names:
        modules[name].requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def frozen_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorms with no trainable parameter: these must never update running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]


def forward_blocks(model: nn.Module, arch: str) -> list[nn.Module]:
    """The model's forward pass as a flat sequence of blocks whose composition equals ``model(x)``.

    ResNet: stem modules, then every residual block of layer1..layer4, pooling, flatten, fc.
    SqueezeNet: every module of ``features``, then the classifier and flatten. Residual and
    Fire blocks stay whole: a cut inside one would break its skip or concatenation.
    """
    check_arch(arch)
    if arch.startswith("resnet"):
        blocks: list[nn.Module] = [model.conv1, model.bn1, model.relu, model.maxpool]
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            blocks.extend(stage)
        return [*blocks, model.avgpool, nn.Flatten(1), model.fc]
    return [*model.features, model.classifier, nn.Flatten(1)]


class StagedModel(nn.Module):
    """The same model split into a frozen prefix, run without autograd, and the trainable rest.

    It shares parameters with the wrapped model (no copy): the optimizer, checkpoints and the
    saved model all use the original model; this is only how the training forward runs.
    """

    def __init__(self, prefix: list[nn.Module], rest: list[nn.Module]) -> None:
        super().__init__()
        self.prefix = nn.Sequential(*prefix)
        self.rest = nn.Sequential(*rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.prefix):
            with torch.no_grad():
                x = self.prefix(x)
        return self.rest(x)

    def train(self, mode: bool = True) -> "StagedModel":
        """Training mode except for frozen modules: the prefix and every frozen BatchNorm stay in
        eval mode, so their running statistics never change."""
        super().train(mode)
        self.prefix.eval()
        for bn in frozen_batchnorms(self.rest):
            bn.eval()
        return self


def split_frozen_prefix(model: nn.Module, arch: str) -> StagedModel:
    """Cut ``model`` before the first block that holds a trainable parameter (after ``apply_selection``)."""
    blocks = forward_blocks(model, arch)
    cut = next((i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())), len(blocks))
    return StagedModel(blocks[:cut], blocks[cut:])

"""What the supported architectures are made of, without importing torch.

Choosing layers needs only names and parameter counts: a backbone's conv layers in forward
order, the BatchNorm unfrozen with each, and the classifier head. Building the torchvision
model to count them would cost the selection step's process the import of torch and
torchvision (seconds, against milliseconds of work), so the counts are written down here
(the ResNets' derived from their blocks per stage);
``tests/test_archs.py`` checks every entry against the torchvision model, and
:func:`entropy_ft.model.factory.backbone` derives the same :class:`Backbone` from a built model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from entropy_ft.errors import UserError

Conv = tuple[str, str | None, int]  # (conv, the BatchNorm right after it or None, parameters of both)


def _conv_bn(name: str, bn: str, cin: int, cout: int, k: int) -> Conv:
    """A bias-free k x k conv and its BatchNorm (weight and bias per channel)."""
    return (name, bn, cin * cout * k * k + 2 * cout)


def _resnet(blocks: tuple[int, int, int, int]) -> tuple[Conv, ...]:
    """The convs of a torchvision BasicBlock ResNet with ``blocks`` blocks per stage, in forward order:
    the 7x7 stem, two 3x3 convs per block, and a 1x1 downsample in each later stage's first block."""
    convs = [_conv_bn("conv1", "bn1", 3, 64, 7)]
    cin = 64
    for stage, count in enumerate(blocks, 1):
        cout = 64 * 2 ** (stage - 1)
        for block in range(count):
            at = f"layer{stage}.{block}"
            convs += [_conv_bn(f"{at}.conv1", f"{at}.bn1", cin if block == 0 else cout, cout, 3),
                      _conv_bn(f"{at}.conv2", f"{at}.bn2", cout, cout, 3)]
            if block == 0 and stage > 1:
                convs.append(_conv_bn(f"{at}.downsample.0", f"{at}.downsample.1", cin, cout, 1))
        cin = cout
    return tuple(convs)


# Backbone convs in forward order; SqueezeNet's have no BatchNorm and a bias each.
CONV_LAYERS: dict[str, tuple[Conv, ...]] = {
    "resnet18": _resnet((2, 2, 2, 2)),
    "resnet34": _resnet((3, 4, 6, 3)),
    "squeezenet1_0": (
        ("features.0", None, 14208),
        ("features.3.squeeze", None, 1552),
        ("features.3.expand1x1", None, 1088),
        ("features.3.expand3x3", None, 9280),
        ("features.4.squeeze", None, 2064),
        ("features.4.expand1x1", None, 1088),
        ("features.4.expand3x3", None, 9280),
        ("features.5.squeeze", None, 4128),
        ("features.5.expand1x1", None, 4224),
        ("features.5.expand3x3", None, 36992),
        ("features.7.squeeze", None, 8224),
        ("features.7.expand1x1", None, 4224),
        ("features.7.expand3x3", None, 36992),
        ("features.8.squeeze", None, 12336),
        ("features.8.expand1x1", None, 9408),
        ("features.8.expand3x3", None, 83136),
        ("features.9.squeeze", None, 18480),
        ("features.9.expand1x1", None, 9408),
        ("features.9.expand3x3", None, 83136),
        ("features.10.squeeze", None, 24640),
        ("features.10.expand1x1", None, 16640),
        ("features.10.expand3x3", None, 147712),
        ("features.12.squeeze", None, 32832),
        ("features.12.expand1x1", None, 16640),
        ("features.12.expand3x3", None, 147712),
    ),
    "squeezenet1_1": (
        ("features.0", None, 1792),
        ("features.3.squeeze", None, 1040),
        ("features.3.expand1x1", None, 1088),
        ("features.3.expand3x3", None, 9280),
        ("features.4.squeeze", None, 2064),
        ("features.4.expand1x1", None, 1088),
        ("features.4.expand3x3", None, 9280),
        ("features.6.squeeze", None, 4128),
        ("features.6.expand1x1", None, 4224),
        ("features.6.expand3x3", None, 36992),
        ("features.7.squeeze", None, 8224),
        ("features.7.expand1x1", None, 4224),
        ("features.7.expand3x3", None, 36992),
        ("features.9.squeeze", None, 12336),
        ("features.9.expand1x1", None, 9408),
        ("features.9.expand3x3", None, 83136),
        ("features.10.squeeze", None, 18480),
        ("features.10.expand1x1", None, 9408),
        ("features.10.expand3x3", None, 83136),
        ("features.11.squeeze", None, 24640),
        ("features.11.expand1x1", None, 16640),
        ("features.11.expand3x3", None, 147712),
        ("features.12.squeeze", None, 32832),
        ("features.12.expand1x1", None, 16640),
        ("features.12.expand3x3", None, 147712),
    ),
}

# The classifier head that replaces ImageNet's: its module name and its input features.
HEADS: dict[str, tuple[str, int]] = {
    "resnet18": ("fc", 512),
    "resnet34": ("fc", 512),
    "squeezenet1_0": ("classifier.1", 512),
    "squeezenet1_1": ("classifier.1", 512),
}


def stage_of(arch: str, conv: str) -> str | None:
    """The stage a conv of ``arch`` belongs to, or None for an architecture without stages.

    A ResNet's stages are its stem (``conv1``) and ``layer1`` to ``layer4``: within one, the
    feature maps keep their size and width, so entropies compare like with like. SqueezeNet's
    fire modules change width from one to the next and are not grouped.
    """
    if not arch.startswith("resnet"):
        return None
    return conv.split(".")[0] if conv.startswith("layer") else "stem"


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` is not a supported architecture, or None (the check of every ``--arch``)."""
    return None if arch in CONV_LAYERS else f"unknown architecture {arch!r}; choose one of {', '.join(CONV_LAYERS)}"


def check_arch(arch: str) -> str:
    if problem := arch_problem(arch):
        raise UserError(problem)
    return arch


def check_num_classes(num_classes: int) -> int:
    if num_classes < 2:
        raise UserError(f"need at least 2 classes to train a classifier, got {num_classes}")
    return num_classes


def head_module_name(arch: str) -> str:
    """Module name of the trainable head (for SqueezeNet it is a 1x1 Conv2d, not a backbone layer)."""
    return HEADS[check_arch(arch)][0]


@dataclass(frozen=True)
class Backbone:
    """Exact parameter accounting of ``arch`` with a ``num_classes`` head.

    Every parameter belongs to a conv, its BatchNorm or the head, so ``total_params`` is what
    full fine-tuning trains.
    """

    arch: str
    convs: tuple[Conv, ...]  # as in CONV_LAYERS
    head: str
    head_params: int
    total_params: int

    @property
    def stages(self) -> dict[str, str] | None:
        """Backbone convs in forward order -> their stage, or None where ``arch`` has no stages."""
        if stage_of(self.arch, self.convs[0][0]) is None:
            return None
        return {conv: stage_of(self.arch, conv) for conv, _, _ in self.convs}

    @property
    def costs(self) -> dict[str, int]:
        """Backbone convs in forward order -> parameters that unfreezing each one trains."""
        return {conv: params for conv, _, params in self.convs}

    def trainable_modules(self, layers: Sequence[str]) -> list[str]:
        """Modules a selection trains: each selected conv, the BatchNorm right after it, and the head."""
        batchnorms = {conv: bn for conv, bn, _ in self.convs}
        unknown = [name for name in layers if name not in batchnorms]
        if unknown:
            raise UserError(f"selection names layers that {self.arch} does not have: {unknown[:5]}")
        names: list[str] = []
        for name in layers:
            names.append(name)
            if batchnorms[name] is not None:
                names.append(batchnorms[name])
        names.append(self.head)
        return names

    def accounting(self, layers: Sequence[str]) -> dict:
        """Exact parameter figures of training ``layers`` (their BatchNorms and the head included)."""
        modules = self.trainable_modules(layers)
        costs = self.costs
        trainable = self.head_params + sum(costs[name] for name in layers)
        return {
            "trainable_modules": modules,
            "trainable_params": trainable,
            "total_params": self.total_params,
            "full_params": self.total_params,
            "reduction_vs_full": 1.0 - trainable / self.total_params,
        }


def backbone(arch: str, num_classes: int) -> Backbone:
    """The :class:`Backbone` of ``arch`` with a ``num_classes`` head, from the tables above."""
    convs = CONV_LAYERS[check_arch(arch)]
    head, features = HEADS[arch]
    head_params = (features + 1) * check_num_classes(num_classes)  # weights and bias, Linear or 1x1 conv alike
    return Backbone(arch, convs, head, head_params, sum(params for _, _, params in convs) + head_params)

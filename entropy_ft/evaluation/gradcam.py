"""Grad-CAM: where a fine-tuned model looks when it answers, for a seeded sample of test images.

A reviewer trusts a tumour classifier more when its evidence lies in the lesion rather than in
the skull outline, a scanner label or the padding. Grad-CAM (Selvaraju et al., 2017) weights
each channel of the last conv block by the mean gradient of the predicted class's logit and
keeps the positive part of the sum. The attribution itself is captum's ``LayerGradCam``
(maintained with PyTorch) rather than hand-written hooks; this module only chooses the images
(:func:`pick`), the layer (:func:`target_layer`) and draws the overlay (:func:`overlay`).

The explained class is the predicted one: for a wrong answer the map shows what misled the
model. Each map is scaled to its own maximum, so it says where the model looks, not how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from entropy_ft.data.loader import to_model_input


def target_layer(model: nn.Module, arch: str) -> tuple[str, nn.Module]:
    """The last conv block, by name and module: its maps are the finest that still carry the class
    evidence. ResNet: ``layer4`` (7x7 at 224 px); SqueezeNet: the last Fire module (13x13)."""
    if arch.startswith("resnet"):
        return "layer4", model.layer4
    return f"features.{len(model.features) - 1}", model.features[-1]


def pick(labels: np.ndarray, predicted: np.ndarray, num_classes: int, per_class: int,
         seed: int) -> list[tuple[int, list[int], list[int]]]:
    """Per true class: (class, up to ``per_class`` correctly and up to ``per_class`` wrongly answered
    image indices), drawn without replacement by a generator seeded by (seed, class), so one
    class's sample does not depend on the others; indices ascending."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    chosen = []
    for c in range(num_classes):
        rng = np.random.default_rng([seed, c])
        right = np.flatnonzero((labels == c) & (predicted == c))
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        chosen.append((c, *(sorted(int(i) for i in rng.choice(pool, min(per_class, len(pool)), replace=False))
                            for pool in (right, wrong))))
    return chosen


def heatmaps(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int],
             device: torch.device) -> np.ndarray:
    """Grad-CAM of ``targets`` for uint8 Bx3xHxW ``images``: float32 BxHxW in [0, 1], each map
    upsampled bilinearly to the image and divided by its own maximum (all zero where it has none)."""
    from captum.attr import LayerAttribution, LayerGradCam

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = to_model_input(images, device)
            cam = LayerGradCam(model, layer).attribute(x, target=list(targets), relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    finally:
        model.train(was_training)
    maps = cam[:, 0].detach().float().cpu().numpy()
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 HxWx3 ``image`` with the jet colour of ``cam`` (HxW in [0, 1]) blended in at
    ``alpha`` x cam: where the model does not look, the scan is shown unchanged."""
    from matplotlib import colormaps

    colour = colormaps["jet"](cam)[..., :3] * 255.0
    weight = alpha * cam[..., None]
    return np.rint(image * (1.0 - weight) + colour * weight).clip(0, 255).astype(np.uint8)


def explain(model: nn.Module, arch: str, pixels, labels: np.ndarray, logits: np.ndarray, probabilities: np.ndarray,
            per_class: int, seed: int, device: torch.device, batch_size: int) -> list[dict]:
    """The :func:`pick` sample with its overlays: one dict per image, by class, correct ones first:
    ``index``, ``label``, ``predicted``, ``probability`` (of the predicted class), ``correct`` and
    ``overlay`` (uint8 HxWx3). ``pixels(i)`` is image ``i`` as the model sees it (uint8 3xHxW)."""
    predicted = np.asarray(logits).argmax(axis=1)
    order = [(i, ok) for _, right, wrong in pick(labels, predicted, probabilities.shape[1], per_class, seed)
             for ok, indices in ((True, right), (False, wrong)) for i in indices]
    _, layer = target_layer(model, arch)
    samples = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        images = torch.stack([pixels(i) for i, _ in chunk])
        cams = heatmaps(model, layer, images, [int(predicted[i]) for i, _ in chunk], device)
        for (i, ok), image, cam in zip(chunk, images, cams):
            samples.append({"index": i, "label": int(labels[i]), "predicted": int(predicted[i]),
                            "probability": float(probabilities[i, predicted[i]]), "correct": ok,
                            "overlay": overlay(image.permute(1, 2, 0).numpy(), cam)})
    return samples

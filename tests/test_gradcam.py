"""Grad-CAM: the seeded sample, captum's maps on a model whose evidence is known, the overlays, and
what `entropy-ft evaluate --gradcam` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from selection_factory import selection_doc
from torch import nn

from entropy_ft.cli import main
from entropy_ft.data.loader import ParquetImages
from entropy_ft.evaluation.calibration import softmax
from entropy_ft.evaluation.gradcam import explain, heatmaps, overlay, pick, target_layer
from entropy_ft.evaluation.noise import predict
from entropy_ft.model import factory
from entropy_ft.model.model_dir import load_model_dir

CPU = torch.device("cpu")


def test_pick_draws_right_and_wrong_per_class_seeded_and_independently():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    chosen = pick(labels, predicted, 4, 2, seed=7)
    assert [c for c, _, _ in chosen] == [0, 1, 2, 3]
    (_, right0, wrong0), (_, right1, wrong1), (_, right2, wrong2), (_, right3, wrong3) = chosen
    assert len(right0) == 2 and set(right0) <= {0, 1, 2} and wrong0 == [3]
    assert right1 == [4] and len(wrong1) == 2 and set(wrong1) == {5, 6}
    assert right2 == [7] and wrong2 == [] and right3 == wrong3 == []
    assert pick(labels, predicted, 4, 2, seed=7) == chosen
    draws = {tuple(pick(labels, predicted, 4, 2, seed=s)[0][1]) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    # class 0's draw does not depend on what the other classes hold
    assert pick(labels[:4], predicted[:4], 4, 2, seed=7)[0] == chosen[0]
    assert pick(labels, predicted, 4, 0, seed=7) == [(c, [], []) for c in range(4)]


class BrightnessNet(nn.Module):
    """One block (conv, ReLU, like the last block of ResNet or SqueezeNet): the rectified, normalised
    brightness; class 0's logit rises with it, class 1's falls. Grad-CAM of class 0 must light up the
    bright patch; class 1 has no positive evidence anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.block[0].weight.fill_(1 / 3)
            self.block[0].bias.zero_()
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.block(x).mean(dim=(2, 3)))


def test_heatmaps_light_up_the_evidence_of_the_explained_class():
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[0, :, 2:10, 3:11] = 255  # top left
    images[1, :, 20:28, 18:26] = 200  # bottom right
    model = BrightnessNet()
    maps = heatmaps(model, model.block, images, [0, 0], CPU)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    for cam, (rows, cols) in zip(maps, [(slice(2, 10), slice(3, 11)), (slice(20, 28), slice(18, 26))]):
        inside = np.zeros_like(cam, dtype=bool)
        inside[rows, cols] = True
        assert cam[inside].min() > 0.99 and cam[~inside].max() < 1e-6
    assert not heatmaps(model, model.block, images, [1, 1], CPU).any()  # nothing raises class 1


def test_overlay_leaves_the_scan_where_the_model_does_not_look():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cam = np.zeros((16, 16), np.float32)
    cam[4:8, 4:8] = 1.0
    cam[10:12, 10:12] = 0.3
    out = overlay(image, cam)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[cam == 0], image[cam == 0])
    hot = np.abs(out[4:8, 4:8].astype(int) - image[4:8, 4:8]).sum(axis=2)
    warm = np.abs(out[10:12, 10:12].astype(int) - image[10:12, 10:12]).sum(axis=2)
    assert hot.min() > 0 and hot.mean() > warm.mean()  # blended in proportion to the map


@pytest.fixture(scope="module")
def pretrained_model(synthetic_dataset, weights_dir, tmp_path_factory):
    """resnet18 from the shared pretrained weights, head trained one epoch at 96 px (layer4 is 3x3)."""
    tmp = tmp_path_factory.mktemp("gradcam")
    doc = selection_doc("resnet18", "head")
    _, info = factory.build_model("resnet18", 4, str(weights_dir / "resnet18-imagenette.pt"))
    doc.update(info.as_dict())
    (tmp / "selection.json").write_text(json.dumps(doc))
    assert main(["finetune", str(synthetic_dataset), str(tmp / "selection.json"), "--out", str(tmp / "model"),
                 "--epochs", "1", "--image-size", "96", "--batch-size", "32", "--precision", "fp32",
                 "--device", "cpu"]) == 0
    return tmp / "model"


def test_overlays_of_a_trained_model_differ_from_its_input(pretrained_model, synthetic_dataset):
    model, meta = load_model_dir(pretrained_model)
    images = ParquetImages(synthetic_dataset, "test", image_size=meta.image_size)
    loader = torch.utils.data.DataLoader(images, batch_size=32)
    labels, logits = predict(model, loader, CPU)
    samples = explain(model, meta.arch, images.pixels, labels, logits, softmax(logits), 1, 0, CPU, 4)
    assert 4 <= len(samples) <= 8 and target_layer(model, meta.arch)[0] == "layer4"
    for s in samples:
        pixels = images.pixels(s["index"]).permute(1, 2, 0).numpy()
        assert s["overlay"].shape == pixels.shape == (96, 96, 3)
        changed = np.abs(s["overlay"].astype(int) - pixels).sum(axis=2) > 0
        assert 0.05 < changed.mean(), s["index"]  # the map covers part of the scan
        assert s["correct"] == (s["label"] == s["predicted"]) == (labels[s["index"]] == logits[s["index"]].argmax())


def test_evaluate_writes_the_gradcam_figure_and_names_its_images(pretrained_model, synthetic_dataset, tmp_path):
    assert main(["evaluate", str(pretrained_model), str(synthetic_dataset), "--out", str(tmp_path / "e"),
                 "--noise", "0", "--gradcam", "2", "--seed", "3"]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    cam = report["gradcam"]
    assert cam["per_class"] == 2 and cam["seed"] == 3 and cam["layer"] == "layer4"
    cm = np.array(report["confusion_matrix"])
    for c, name in enumerate(report["classes"]):
        mine = [s for s in cam["images"] if s["class"] == name]
        right = [s for s in mine if s["correct"]]
        assert len(right) == min(2, cm[c, c]) and len(mine) - len(right) == min(2, cm[c].sum() - cm[c, c])
        assert all((s["predicted"] == name) == s["correct"] for s in mine)
        assert all(s["source"].startswith("synthetic/") for s in mine)
    png = Image.open(tmp_path / "e" / "gradcam.png")
    assert png.format == "PNG" and png.size[1] > 400  # four rows of images
    html = (tmp_path / "e" / "eval.html").read_text()
    assert "<h2>Where the model looks (Grad-CAM)</h2>" in html and "data:image/png;base64" in html

    assert main(["evaluate", str(pretrained_model), str(synthetic_dataset), "--out", str(tmp_path / "off"),
                 "--noise", "0", "--gradcam", "0"]) == 0
    assert json.loads((tmp_path / "off" / "eval.json").read_text())["gradcam"] is None
    assert not (tmp_path / "off" / "gradcam.png").exists()
    assert "Grad-CAM" not in (tmp_path / "off" / "eval.html").read_text()


def test_evaluate_refuses_a_negative_gradcam_count(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "m"), str(tmp_path / "d"), "--out", str(tmp_path / "e"),
                 "--gradcam", "-1"]) == 2
    assert "--gradcam -1" in capsys.readouterr().err

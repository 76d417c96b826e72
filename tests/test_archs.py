"""The architecture tables the select step counts with, against the torchvision models they describe."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_ft.errors import UserError
from entropy_ft.model import archs
from entropy_ft.model.factory import ARCHITECTURES, build_model, measure_backbone

HEAVY = ("torch", "torchvision", "mlflow")


def test_the_tables_cover_exactly_the_supported_architectures():
    assert list(archs.CONV_LAYERS) == list(archs.HEADS) == list(ARCHITECTURES)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("num_classes", [2, 4, 10])
def test_tables_match_the_built_model(arch, num_classes):
    model, _ = build_model(arch, num_classes, "none")
    assert archs.backbone(arch, num_classes) == measure_backbone(model, arch)


def test_accounting_from_tables_matches_the_model():
    model, _ = build_model("squeezenet1_1", 4, "none")
    built, table = measure_backbone(model, "squeezenet1_1"), archs.backbone("squeezenet1_1", 4)
    layers = random.Random(0).sample(list(table.costs), 7)
    assert table.accounting(layers) == built.accounting(layers)
    assert table.accounting([])["trainable_modules"] == ["classifier.1"]


def test_bad_architecture_and_class_count_are_user_errors():
    with pytest.raises(UserError, match="unknown architecture 'vgg16'"):
        archs.backbone("vgg16", 4)
    with pytest.raises(UserError, match="at least 2 classes"):
        archs.backbone("resnet18", 1)
    with pytest.raises(UserError, match="does not have"):
        archs.backbone("resnet18", 4).trainable_modules(["layer9.conv1"])


def test_select_runs_without_importing_torch_or_mlflow(tmp_path: Path):
    """A pipeline task pays for every import in a fresh process: selecting layers must not cost torch's."""
    rng = random.Random(1)
    layers = [{"name": conv, "params": params, "entropy": rng.uniform(3, 8), "entropy_std": 0.1}
              for conv, _, params in archs.CONV_LAYERS["resnet18"]]
    (tmp_path / "profile.json").write_text(json.dumps({"arch": "resnet18", "num_classes": 4, "layers": layers}))
    code = (
        "import json, sys\n"
        "from entropy_ft import kfp_outputs\n"
        "from entropy_ft.steps import select\n"
        f"select.run(select.Config(profile={str(tmp_path)!r}, strategy='entropy', out={str(tmp_path / 'sel')!r}))\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "sel" / "selection.json").is_file()

"""Pretrained state_dicts from the shared weights (ENTROPY_FT_WEIGHTS_DIR) and corrupt files."""

from __future__ import annotations

import pytest
import torch

from entropy_ft.errors import UserError
from entropy_ft.model.factory import build_model
from entropy_ft.storage import sha256_file


def test_shared_resnet18_weights_load_with_a_4_class_head(weights_dir):
    path = weights_dir / "resnet18-imagenette.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model, info = build_model("resnet18", 4, str(path))
    own = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert backbone and all(torch.equal(own[k], state[k]) for k in backbone)
    assert model.fc.out_features == 4  # the 10-class imagenette head is replaced
    assert info.source == str(path)
    assert info.sha256 == sha256_file(path)


def test_a_truncated_state_dict_is_a_clear_error(weights_dir, tmp_path):
    data = (weights_dir / "squeezenet1_1-imagenette.pt").read_bytes()
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable state_dict") as err:
        build_model("squeezenet1_1", 4, str(broken))
    assert str(broken) in str(err.value)


def test_a_pickle_that_is_not_a_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(UserError, match="does not hold a state_dict") as err:
        build_model("resnet18", 4, str(path))
    assert str(path) in str(err.value)


def test_weights_of_another_architecture_are_refused(weights_dir):
    path = weights_dir / "squeezenet1_1-imagenette.pt"
    with pytest.raises(UserError, match="does not fit resnet18"):
        build_model("resnet18", 4, str(path))

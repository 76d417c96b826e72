"""The Model artifact: a folder with ``weights.safetensors`` (the whole fine-tuned state_dict)
and ``model.json`` (:class:`entropy_ft.artifacts.ModelMeta`: what rebuilds and feeds it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from entropy_ft.artifacts import ModelMeta
from entropy_ft.errors import UserError

WEIGHTS_FILE = "weights.safetensors"


def save_model_dir(out: Path, model: nn.Module, meta: ModelMeta | Mapping) -> None:
    """Write weights and metadata into ``out`` (a local staging directory); a mapping is checked as a model.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    if not isinstance(meta, ModelMeta):
        meta = ModelMeta.from_json(dict(meta), str(out / ModelMeta.FILE))
    meta.write(str(out))


def load_model_meta(path: str | Path) -> ModelMeta:
    if not (Path(path) / ModelMeta.FILE).is_file():
        raise UserError(f"{path}: not a model directory (no {ModelMeta.FILE}); create one with `entropy-ft finetune`")
    return ModelMeta.read(str(path))


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the fine-tuned model in eval mode, with its metadata."""
    from safetensors.torch import load_file

    from entropy_ft.model.factory import build_model

    meta = load_model_meta(path)
    model, _ = build_model(meta.arch, len(meta.classes), "none")
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{path}: model directory has no {WEIGHTS_FILE}")
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device).eval(), meta

"""The Model artifact: a directory with ``weights.safetensors`` (the whole fine-tuned
state_dict) and ``model.json`` (what is needed to rebuild and feed it).

``model.json`` holds: ``schema_version``, ``arch``, ``classes`` (label order),
``preprocessing`` (``image_size``, ``mean``, ``std``, ``channels``: 3, ``input``: how raw
pixels become model input), ``selection`` (the selection.json content), ``training`` (the
fine-tuning config and history summary), ``weights`` / ``weights_sha256`` (the pretrained
source) and ``data_manifest_sha256``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import SCHEMA_VERSION
from .errors import UserError

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"


def save_model_dir(out: Path, model: nn.Module, meta: dict) -> None:
    """Write weights and metadata into ``out`` (a local staging directory)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / META_FILE).write_text(json.dumps({"schema_version": SCHEMA_VERSION, **meta}, indent=2) + "\n")


def load_model_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{path}: not a model directory (no {META_FILE}); create one with `entropy-ft finetune`")
    return json.loads(meta_path.read_text())


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the fine-tuned model in eval mode, with its metadata."""
    from safetensors.torch import load_file

    from .models import build_model

    meta = load_model_meta(path)
    model, _ = build_model(meta["arch"], len(meta["classes"]), "none")
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{path}: model directory has no {WEIGHTS_FILE}")
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device).eval(), meta

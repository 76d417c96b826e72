"""Where the benchmarks find an architecture's stand-in weights in a folder.

``../shared/weights`` holds ``<arch>-imagenette.pt`` (fp32 ``torch.save`` state_dicts);
``benchmarks/device_stage.py`` writes ``<arch>-imagenette.safetensors`` in bf16, half the bytes,
for a GPU machine that takes at most 64 MiB of inputs. Either loads through the library's
weight loader, which casts to the model's fp32 parameters.
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = (".pt", ".safetensors")


def find(weights_dir: Path, arch: str) -> Path:
    """``<arch>-imagenette.pt`` or ``.safetensors`` in ``weights_dir``; exits naming the folder when neither is."""
    for suffix in SUFFIXES:
        path = weights_dir / f"{arch}-imagenette{suffix}"
        if path.is_file():
            return path
    raise SystemExit(f"--weights-dir {weights_dir}: no {arch}-imagenette.pt or .safetensors")

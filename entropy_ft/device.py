"""Device and numeric precision: ``--device auto|cpu|cuda[:N]`` and ``--precision auto|fp32|bf16|fp16``.

``auto`` precision picks what is fast and safe on the hardware at hand: bf16 autocast on
CUDA GPUs that support it and on CPUs with native bf16 instructions (AVX512-BF16 or AMX,
where oneDNN runs bf16 convolutions at up to twice the fp32 rate); fp16 with a GradScaler
on older GPUs; fp32 elsewhere. Weights and optimizer state stay fp32 in every case, only
the forward and backward compute is autocast.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from entropy_ft.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda[:N]")
    return device


def cpu_has_native_bf16() -> bool:
    """True when oneDNN can run bf16 convolutions natively (AVX512-BF16 or AMX), not emulated."""
    return bool(
        torch.backends.mkldnn.is_available()
        and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    )


def resolve_precision(name: str, device: torch.device) -> str:
    """The concrete precision (fp32, bf16 or fp16) for ``name`` on ``device``."""
    if name not in PRECISIONS:
        raise UserError(f"--precision {name}: expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return name
    if name == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name == "fp16":
        raise UserError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    return name


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed-precision autocast for ``precision``; a no-op for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling keeps small fp16 gradients from flushing to zero; bf16 and fp32 need none (disabled scaler)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def default_workers() -> int:
    """The cores this process may use: CPU affinity, capped by a cgroup CPU quota (a Kubernetes
    CPU limit), so that a pod limited to 2 CPUs on a 64-core node does not start 64 decoders."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def _cgroup_cpu_quota() -> int | None:
    v2 = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "max 100000" (no limit) or "200000 100000" (2 CPUs)
    if v2:
        quota, period = (v2.split() + [""])[:2]
    else:  # cgroup v1: a quota of -1 means no limit
        quota, period = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if not quota or not period or quota in ("max", "-1"):
        return None
    return math.ceil(int(quota) / int(period))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, ValueError):
        return None

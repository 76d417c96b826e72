"""Where a benchmark's figures came from: the command that produced them and the machine it ran on, as
each results file states them (figures from a busy or different machine read very differently)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(script: str, argv: list[str]) -> str:
    """The command line as a reader would retype it from the repository root: the interpreter that really
    ran, relative to the root when it lives there (``.venv/bin/python``), else as invoked."""
    python = Path(sys.executable)
    try:
        python = python.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([str(python), script, *argv])


def machine() -> dict:
    """CPU model, cores, memory, GPU (None without one) and the versions that decide the numbers."""
    import torch
    import torchvision

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "platform": platform.platform()}

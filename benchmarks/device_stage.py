"""Stage, on this machine, what ``benchmarks/device_check.sh`` needs on a bare GPU machine.

    .venv/bin/python benchmarks/device_stage.py --archs squeezenet1_1            # first call: data too
    .venv/bin/python benchmarks/device_stage.py --archs resnet18 --no-data       # later calls on the
                                                                                 # same (warm) machine

The GPU machine has torch, torchvision, pyarrow, pillow, safetensors, numpy, scipy, scikit-learn
and matplotlib, no kfp and no mlflow, reaches nothing outside itself, and takes at most 64 MiB of
inputs per call (the checkout's tracked files included). Into one ignored folder (``--out``,
``.device/``, named in the call's ``carry``) this writes:

- ``wheels/``: what ingestion needs and that machine lacks (ImageHash and PyWavelets for the
  duplicate check, pydicom because ingestion reads DICOM too), the versions installed here, for
  CPython 3.12 (``--python-version``) on manylinux x86-64;
- ``weights/<arch>-imagenette.safetensors``: the stand-in weights in bf16, half the bytes of the
  fp32 originals (the library loads them into fp32 parameters);
- the Kaggle zip (about 50 MiB), unless ``--no-data``: ``device_check.sh`` ingests it there once into
  ``benchmarks/.cache``, which stays on that machine between calls while it is held.

The archive and the three architectures' weights do not fit in one call (ResNet34 alone is 42 MiB
in bf16), hence one architecture per call after the first. Exits 2 naming what to leave out
when the total would pass 64 MiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LIMIT = 64 * 2**20  # what travels with one call of the device machine
WHEELS = ("ImageHash", "PyWavelets", "pydicom")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="squeezenet1_1", help="comma-separated architectures whose weights travel")
    p.add_argument("--archive", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_KAGGLE_ZIP", SHARED / "data" / "brain-tumor-mri-kaggle.zip")))
    p.add_argument("--weights-dir", type=Path, default=Path(os.environ.get(
        "ENTROPY_FT_WEIGHTS_DIR", SHARED / "weights")))
    p.add_argument("--no-data", dest="data", action="store_false",
                   help="leave the archive out: the machine already holds the ingested dataset from an earlier call")
    p.add_argument("--out", type=Path, default=ROOT / ".device")
    p.add_argument("--python-version", default="3.12",
                   help="the Python the wheels are for: the GPU machine's (3.12), or this one's for a CPU proof")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if args.data and not args.archive.is_file():
        p.error(f"--archive {args.archive}: no such file")
    return args


def tracked_bytes() -> int:
    """The checkout's tracked files, which travel with every call."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return sum((ROOT / n).stat().st_size for n in names.decode().split("\0") if n and (ROOT / n).is_file())


def download_wheels(out: Path, python_version: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(out), *pins]
    subprocess.run(cmd, check=True)


def bf16_weights(source: Path, out: Path) -> None:
    """The state_dict with every floating tensor in bf16 (integer buffers such as BatchNorm's counter kept)."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(source, map_location="cpu", weights_only=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(out))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    download_wheels(args.out / "wheels", args.python_version)
    for arch in args.archs:
        source = args.weights_dir / f"{arch}-imagenette.pt"
        if not source.is_file():
            raise SystemExit(f"--weights-dir {args.weights_dir}: no {source.name}")
        bf16_weights(source, args.out / "weights" / f"{arch}-imagenette.safetensors")
    if args.data:
        shutil.copyfile(args.archive, args.out / args.archive.name)
    sizes = {str(p.relative_to(args.out)): p.stat().st_size for p in sorted(args.out.rglob("*")) if p.is_file()}
    repo = tracked_bytes()
    total = repo + sum(sizes.values())
    for name, size in sizes.items():
        print(f"{size / 2**20:7.1f} MiB  {name}")
    print(f"{repo / 2**20:7.1f} MiB  the checkout's tracked files\n{total / 2**20:7.1f} MiB  in all (limit 64 MiB)")
    if total > LIMIT:
        print(f"device_stage: {total / 2**20:.1f} MiB would travel, over 64 MiB: stage fewer --archs, or --no-data "
              "when the machine holds the dataset already", file=sys.stderr)
        raise SystemExit(2)
    print(f"then: run(command='bash benchmarks/device_check.sh {','.join(args.archs)}', carry=['.device'])")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make images`: build the component images from images/ into OCI archives, with no container daemon.

buildah runs each Dockerfile's own steps (``--isolation chroot``, vfs storage: no daemon, no
overlay mounts, no cgroups needed), then writes ``out/images/<name>.oci.tar``, the archive a user
pushes with ``skopeo copy`` or ``buildah push`` (docs/deploy.md). The recipe stays the Dockerfile;
this script only chooses two of its build arguments where their defaults cannot be reached:

* ``BASE_IMAGE``: when the Dockerfile's base cannot be pulled (no registry answers, an air-gapped
  host), a Debian bookworm root made with debootstrap, holding python3 and its venv module.
* ``TORCH_INDEX_URL``: when the PyTorch index cannot be reached, the package sources this machine's
  own pip uses (its index, extra indexes, find-links and constraints, forwarded into the build as
  /etc/pip.conf, local folders mounted read-only). The torch wheels are then whatever that pip
  resolves for the pinned version, and the archive's build record says so.

Standard library only: it runs before any venv exists. Each image's build time, size and the
choices above go to ``out/images/build.json``.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAVOURS = {"cpu": ROOT / "images" / "Dockerfile", "cuda": ROOT / "images" / "Dockerfile.cuda"}
DEBOOTSTRAP_BASE = "localhost/entropy-ft-base:bookworm"
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,ca-certificates"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def log(message: str) -> None:
    print(f">> {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"build_images: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def dockerfile_arg(dockerfile: Path, name: str) -> str:
    """The default a Dockerfile gives build argument ``name`` (``ARG name=value``)."""
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    if not match:
        fail(f"{dockerfile.relative_to(ROOT)} declares no ARG {name}=...")
    return match.group(1)


def image_label(dockerfile: Path, label: str) -> str:
    match = re.search(rf'{re.escape(label)}="([^"]+)"', dockerfile.read_text())
    if not match:
        fail(f"{dockerfile.relative_to(ROOT)} has no {label} label")
    return match.group(1)


def reachable(url: str, timeout: float = 8.0) -> bool:
    """Whether ``url`` answers at all (any HTTP status counts: only a dead network or name does not)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def pullable(image: str) -> bool:
    """Whether buildah can pull ``image`` now (already in local storage counts)."""
    have = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], capture_output=True)
    if have.returncode == 0:
        return True
    log(f"pulling {image}")
    pulled = subprocess.run([*BUILDAH, "pull", "--quiet", image], capture_output=True, text=True, timeout=1800)
    if pulled.returncode != 0:
        log(f"cannot pull {image}: {pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else '?'}")
    return pulled.returncode == 0


def debootstrap_base(work: Path, mirror: str) -> str:
    """A Debian bookworm base image made with debootstrap (minbase plus python3 and venv), built once."""
    if subprocess.run([*BUILDAH, "inspect", "--type", "image", DEBOOTSTRAP_BASE], capture_output=True).returncode == 0:
        log(f"base {DEBOOTSTRAP_BASE} is already in buildah's storage")
        return DEBOOTSTRAP_BASE
    if not shutil.which("debootstrap"):
        fail("no registry answers and debootstrap is missing: apt-get install debootstrap")
    rootfs = work / "bookworm-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"debootstrap bookworm (minbase + {DEBOOTSTRAP_PACKAGES}) from {mirror}")
    run(["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm", str(rootfs), mirror],
        stdout=subprocess.DEVNULL)
    shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
    (rootfs / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
    container = run([*BUILDAH, "from", "scratch"], capture_output=True).stdout.strip()
    try:
        mount = run([*BUILDAH, "mount", container], capture_output=True).stdout.strip()
        run(["cp", "-a", f"{rootfs}/.", mount])
        run([*BUILDAH, "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--cmd", "/bin/bash", "--label", "org.opencontainers.image.description=debian bookworm, debootstrap "
             f"minbase + {DEBOOTSTRAP_PACKAGES}", container])
        run([*BUILDAH, "commit", "--quiet", container, DEBOOTSTRAP_BASE], stdout=subprocess.DEVNULL)
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)
        shutil.rmtree(rootfs, ignore_errors=True)
    return DEBOOTSTRAP_BASE


def host_pip_sources(tmp: Path) -> tuple[str, list[str], dict]:
    """This machine's pip sources as a build would need them: the index URL, buildah volume flags
    (a pip.conf, the CA bundle pip trusts, every local folder it names, all read-only) and a record
    of what was forwarded. A proxy or mirror with its own CA works in the build as it does here."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():  # "global.find-links='/opt/wheels'" and ":env:.find-links=..."
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in ("index-url", "extra-index-url", "find-links", "constraint", "cert"):
            settings[name] = value.strip().strip("'\"")
    index = settings.pop("index-url", "https://pypi.org/simple")
    volumes = []
    if "cert" in settings:
        volumes += ["-v", f"{settings['cert']}:/run/host-pip-ca.crt:ro"]
        settings["cert"] = "/run/host-pip-ca.crt"
    for name, value in [("index-url", index), *settings.items()]:
        for word in value.split() if name != "cert" else []:
            path = Path(word.removeprefix("file://"))
            if not (word.startswith(("file://", "/")) and path.exists()):
                continue
            # an index's pages link to ../files beside it; a file's folder holds what it names
            folder = path.parent if name.endswith("index-url") or path.is_file() else path
            volumes += ["-v", f"{folder}:{folder}:ro"]
    conf = configparser.ConfigParser()
    conf["global"] = settings
    pip_conf = tmp / "pip.conf"
    with pip_conf.open("w") as f:
        conf.write(f)
    return index, ["-v", f"{pip_conf}:/etc/pip.conf:ro", *volumes], {"index-url": index, **settings}


def build(flavour: str, out: Path, args: argparse.Namespace, tmp: Path) -> dict:
    dockerfile = FLAVOURS[flavour]
    tag = image_label(dockerfile, "org.opencontainers.image.ref.name")
    record: dict = {"image": tag, "dockerfile": str(dockerfile.relative_to(ROOT))}
    build_args, volumes = [], []

    base = dockerfile_arg(dockerfile, "BASE_IMAGE")
    if args.base == "debootstrap" or (args.base == "auto" and not pullable(base)):
        log(f"{flavour}: building on a debootstrap Debian bookworm base instead of {base}")
        record["base"] = f"debootstrap bookworm ({DEBOOTSTRAP_PACKAGES}) in place of {base}"
        started = time.monotonic()
        build_args += ["--build-arg", f"BASE_IMAGE={debootstrap_base(out, args.mirror)}"]
        record["base_seconds"] = round(time.monotonic() - started, 1)  # ~0 when an earlier build made it
    else:
        record["base"] = base

    default_index = dockerfile_arg(dockerfile, "TORCH_INDEX_URL")
    torch_index = args.torch_index_url or default_index
    if args.torch_index_url or reachable(torch_index):
        record["torch_index_url"] = torch_index
    else:
        torch_index, volumes, forwarded = host_pip_sources(tmp)
        log(f"{flavour}: {default_index} cannot be reached; torch comes from this machine's pip sources ({forwarded})")
        record["torch_index_url"] = f"this machine's pip sources in place of {default_index}"
        record["pip_sources"] = forwarded
    build_args += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]

    log(f"{flavour}: buildah bud -f {record['dockerfile']} -t {tag}")
    started = time.monotonic()
    run([*BUILDAH, "bud", "--isolation", "chroot", "--layers=false", "--ignorefile", f"{dockerfile}.dockerignore",
         "-f", str(dockerfile), "-t", tag, *build_args, *volumes, str(ROOT)])
    record["build_seconds"] = round(time.monotonic() - started, 1)
    inspect = json.loads(run([*BUILDAH, "inspect", "--type", "image", tag], capture_output=True).stdout)
    record["image_id"] = inspect["FromImageID"]
    record["layer_bytes"] = image_layers(tag)
    record["size_bytes"] = sum(record["layer_bytes"])

    archive = out / f"{tag.rsplit('/', 1)[1].replace(':', '-')}.oci.tar"
    archive.unlink(missing_ok=True)
    log(f"{flavour}: writing {archive.relative_to(ROOT) if archive.is_relative_to(ROOT) else archive}")
    started = time.monotonic()
    run([*BUILDAH, "push", "--quiet", tag, f"oci-archive:{archive}:{tag}"])
    record["archive"] = str(archive)
    record["archive_bytes"] = archive.stat().st_size
    record["archive_seconds"] = round(time.monotonic() - started, 1)
    log(f"{flavour}: {tag} built in {record['build_seconds']:.0f} s, {record['size_bytes'] / 2**30:.2f} GiB "
        f"unpacked, archive {record['archive_bytes'] / 2**30:.2f} GiB")
    return record


def image_layers(tag: str) -> list[int]:
    """The image's layers' unpacked sizes, base first, from buildah's storage records (what a node's disk
    holds after a pull)."""
    graph = Path(run(["buildah", "info", "--format", "{{.store.GraphRoot}}"], capture_output=True).stdout.strip())
    image_id = json.loads(run([*BUILDAH, "inspect", "--type", "image", tag], capture_output=True).stdout)["FromImageID"]
    images = json.loads((graph / "vfs-images" / "images.json").read_text())
    layers = {layer["id"]: layer for layer in json.loads((graph / "vfs-layers" / "layers.json").read_text())}
    layer_id, sizes = next(image["layer"] for image in images if image["id"] == image_id), []
    while layer_id:
        sizes.insert(0, int(layers[layer_id].get("diff-size", 0)))
        layer_id = layers[layer_id].get("parent")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(FLAVOURS), action="append", help="build only this image (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "images", help="folder of the OCI archives")
    parser.add_argument("--base", choices=("auto", "registry", "debootstrap"), default="auto",
                        help="auto: the Dockerfile's base when it can be pulled, else a debootstrap one")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for debootstrap")
    parser.add_argument("--torch-index-url", default="", help="where the torch wheels come from (default: the "
                        "Dockerfile's, else this machine's pip sources when it cannot be reached)")
    args = parser.parse_args(argv)
    if not shutil.which("buildah"):
        fail("buildah is missing: apt-get install buildah (Debian and Ubuntu), dnf install buildah (Fedora)")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "build.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for flavour in args.only or sorted(FLAVOURS):
            results[flavour] = build(flavour, args.out, args, Path(tmp))
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"build record: {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

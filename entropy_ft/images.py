"""The container images the pipeline's components run in.

The tag is the package version, so one release builds, pushes and compiles against one image:
images/Dockerfile and images/Dockerfile.cuda declare the same references (a test checks it).
"""

from __future__ import annotations

from entropy_ft import __version__

IMAGE_REPOSITORY = "ghcr.io/entropy-ft/entropy-ft"


def default_image(cuda: bool = False, version: str = __version__) -> str:
    """The image reference for this version: `<repo>:<version>`, or `<repo>:<version>-cuda` for GPU steps."""
    return f"{IMAGE_REPOSITORY}:{version}{'-cuda' if cuda else ''}"

"""The KFP pipelines (training, ablation) and the helpers that compile, run, submit and schedule them."""

from __future__ import annotations

from .cluster import ClusterOptions

PIPELINES = ("training", "ablation")


def build(name: str, opts: ClusterOptions | None = None):
    """The pipeline function named ``name``; ``opts`` None builds it for a local run."""
    if name == "training":
        from .training import build_training

        return build_training(opts)
    if name == "ablation":
        from .ablation import build_ablation

        return build_ablation(opts)
    from entropy_ft.errors import UserError

    raise UserError(f"--pipeline {name}: expected one of {', '.join(PIPELINES)}")

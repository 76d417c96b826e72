"""Write a pipeline's compiled IR YAML, with the cluster settings (image, GPU, secrets) baked in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from entropy_ft.logs import log
from entropy_ft.options import Options, option

from . import pipeline_option
from .cluster import ClusterOptions


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    pipeline: str = pipeline_option("compile")
    out: str | None = option(None, help="YAML file to write (default: entropy-ft-<pipeline>.yaml)")
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        ClusterOptions.add_arguments(parser)

    @classmethod
    def from_args(cls, args, **overrides):
        return super().from_args(args, cluster=ClusterOptions.from_args(args), **overrides)


def compile_to(pipeline: str, opts: ClusterOptions, out: Path) -> Path:
    from kfp import compiler

    from .definitions import build

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(pipeline, opts), str(out))
    return out


def run(cfg: Config) -> dict:
    opts = cfg.cluster
    path = compile_to(cfg.pipeline, opts, Path(cfg.out or f"entropy-ft-{cfg.pipeline}.yaml"))
    log.info("compiled the %s pipeline to %s (image %s, finetune image %s, %d GPU)", cfg.pipeline, path,
             opts.step_image(), opts.step_image(gpu=True), opts.gpus)
    return {"pipeline": cfg.pipeline, "out": str(path), "image": opts.step_image(),
            "gpu_image": opts.step_image(gpu=True), "cluster": dataclasses.asdict(opts)}

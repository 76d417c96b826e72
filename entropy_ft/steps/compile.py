"""Write a pipeline's compiled IR YAML, with the cluster settings (image, GPU, secrets) baked in."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..logs import log


@dataclass(frozen=True)
class Config:
    pipeline: str = "training"
    out: str = "entropy-ft-training.yaml"
    cluster: dict = field(default_factory=dict)  # ClusterOptions fields

    def __post_init__(self) -> None:
        from ..pipelines import PIPELINES

        if self.pipeline not in PIPELINES:
            raise UserError(f"--pipeline {self.pipeline}: expected one of {', '.join(PIPELINES)}")

    def options(self):
        from ..pipelines.cluster import ClusterOptions

        try:
            return ClusterOptions(**self.cluster)
        except TypeError as exc:
            raise UserError(f"unknown cluster option: {exc}") from exc


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """Compile-time settings; shared with submit and schedule."""
    from ..pipelines.cluster import ClusterOptions

    d = ClusterOptions()
    g = p.add_argument_group("cluster settings (compiled into the YAML)")
    g.add_argument("--image", default="", help="component image (default: the released image of this version)")
    g.add_argument("--gpu-image", default="", help="image for finetune when it gets a GPU (default: the CUDA variant)")
    g.add_argument("--gpus", type=int, default=d.gpus, help="GPUs for finetune (0 trains on CPU)")
    g.add_argument("--accelerator-type", default=d.accelerator_type)
    g.add_argument("--cpu-request", default=d.cpu_request)
    g.add_argument("--memory-request", default=d.memory_request)
    g.add_argument("--memory-limit", default=d.memory_limit)
    g.add_argument("--shm-size", default=d.shm_size, help="/dev/shm for DataLoader workers")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                   help="e.g. nvidia.com/gpu:NoSchedule")
    g.add_argument("--s3-secret", default=d.s3_secret, help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    g.add_argument("--mlflow-secret", default=d.mlflow_secret,
                   help="Secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (optional)")
    g.add_argument("--settings-configmap", default=d.settings_configmap,
                   help="ConfigMap with MLFLOW_TRACKING_URI and AWS_ENDPOINT_URL (manifests/base/settings.yaml)")


def cluster_from_args(args: argparse.Namespace) -> dict:
    node_selector = {}
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--node-selector {item}: expected KEY=VALUE")
        node_selector[key] = value
    tolerations = []
    for item in args.toleration:
        kv, sep, effect = item.rpartition(":")
        if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise UserError(f"--toleration {item}: expected KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute")
        key, eq, value = kv.partition("=")
        tolerations.append({"key": key, "operator": "Equal" if eq else "Exists", "value": value or None,
                            "effect": effect})
    return {"image": args.image, "gpu_image": args.gpu_image, "gpus": args.gpus,
            "accelerator_type": args.accelerator_type, "cpu_request": args.cpu_request,
            "memory_request": args.memory_request, "memory_limit": args.memory_limit, "shm_size": args.shm_size,
            "node_selector": node_selector, "tolerations": tolerations, "s3_secret": args.s3_secret,
            "mlflow_secret": args.mlflow_secret, "settings_configmap": args.settings_configmap}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="training", help="training or ablation")
    p.add_argument("--out", default=None, help="YAML file to write (default: entropy-ft-<pipeline>.yaml)")
    add_cluster_flags(p)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(args.pipeline, args.out or f"entropy-ft-{args.pipeline}.yaml", cluster_from_args(args))


def compile_to(pipeline: str, opts, out: Path) -> Path:
    from kfp import compiler

    from ..pipelines import build

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(pipeline, opts), str(out))
    return out


def run(cfg: Config) -> dict:
    opts = cfg.options()
    path = compile_to(cfg.pipeline, opts, Path(cfg.out))
    log.info("compiled the %s pipeline to %s (image %s, finetune image %s, %d GPU)", cfg.pipeline, path,
             opts.step_image(), opts.step_image(gpu=True), opts.gpus)
    return {"pipeline": cfg.pipeline, "out": str(path), "image": opts.step_image(),
            "gpu_image": opts.step_image(gpu=True), "cluster": json.loads(json.dumps(cfg.cluster))}

"""Fine-tune a model on a Dataset with a layer selection; writes a Model dir (weights.safetensors + model.json + history.json).

Checkpoints go to ``--checkpoint-dir`` (default: ``OUT/checkpoint``) after every epoch and on
SIGTERM; ``--resume`` continues from there, or starts afresh when there is no checkpoint yet,
so a preempted pod can always be restarted with the same command. When the run completes,
the Model dir replaces OUT, and a default checkpoint inside it goes with the old contents.
On a cluster, point ``--checkpoint-dir`` at durable storage (``s3://...``): a component's
local output folder does not survive the pod.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import torch

from .. import storage
from ..data.format import load_manifest, manifest_sha256
from ..data.loader import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..logs import log
from ..model_dir import save_model_dir
from ..models import build_model, count_params, trainable_module_names
from ..preemption import stop_on_sigterm
from ..train import EpochCallback, TrainConfig, TrainResult, train

MODEL_INPUT = "uint8 HxW or HxWx3 pixels, resized to image_size, replicated to 3 channels, /255, ImageNet mean/std"
HISTORY_FILE = "history.json"
REQUIRED_SELECTION_KEYS = ("arch", "weights", "layers", "strategy")


@dataclass(frozen=True, kw_only=True)
class Config(TrainConfig):
    dataset: str
    selection: str
    out: str
    resume: bool = False
    checkpoint_dir: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("dataset", metavar="DATASET", help="Dataset dir (local path or s3:// prefix) from `entropy-ft ingest`")
    p.add_argument("selection", metavar="SELECTION", help="selection.json from `entropy-ft select`")
    p.add_argument("--out", required=True, help="Model dir to write (local path or s3:// prefix)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay on conv/linear weights")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--patience", type=int, default=d.patience, help="stop after this many epochs without a better val macro-F1")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-size", type=int, default=None, help="model input side in pixels (default: the dataset's)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    p.add_argument("--device", default=d.device, help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on GPUs and CPUs with native bf16, fp16 AMP on older GPUs, else fp32")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, up to 8 on GPU)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if there is one")
    p.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUT/checkpoint)")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        dataset=args.dataset, selection=args.selection, out=args.out, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, batch_size=args.batch_size, label_smoothing=args.label_smoothing,
        patience=args.patience, seed=args.seed, image_size=args.image_size, augment=args.augment, device=args.device,
        precision=args.precision, num_workers=args.num_workers, resume=args.resume, checkpoint_dir=args.checkpoint_dir,
    )


def read_selection(uri: str) -> dict:
    selection = storage.read_json(uri)
    missing = [k for k in REQUIRED_SELECTION_KEYS if k not in selection]
    if missing:
        raise UserError(f"{uri}: not a selection.json (missing {', '.join(missing)}); create one with `entropy-ft select`")
    return selection


def run(cfg: Config, on_epoch_end: EpochCallback | None = None) -> dict:
    selection = read_selection(cfg.selection)
    arch = selection["arch"]
    with storage.local_copy(cfg.dataset) as root:
        manifest = load_manifest(root)
        classes = list(manifest["classes"])
        if selection.get("classes") and list(selection["classes"]) != classes:
            raise UserError(f"{cfg.selection}: made for classes {selection['classes']}, but {cfg.dataset} has {classes}")
        torch.manual_seed(cfg.seed)  # the new head (and, with --weights none, every layer) starts from the seed
        model, weights = build_model(arch, len(classes), selection["weights"])
        if selection.get("weights_sha256") and weights.sha256 != selection["weights_sha256"]:
            raise UserError(f"{cfg.selection}: weights {selection['weights']} have changed since the selection was made "
                            f"(sha256 {weights.sha256} != {selection['weights_sha256']})")
        trainable = trainable_module_names(model, arch, list(selection["layers"]))
        if selection.get("trainable_modules") and list(selection["trainable_modules"]) != trainable:
            raise UserError(f"{cfg.selection}: trainable_modules do not match its layers for {arch}")
        data_sha = manifest_sha256(root)
        checkpoint_dir = cfg.checkpoint_dir or storage.join(cfg.out, "checkpoint")
        fingerprint = {"arch": arch, "classes": classes, "data_manifest_sha256": data_sha, "weights_sha256": weights.sha256}
        with stop_on_sigterm() as stop:
            result = train(model, arch, trainable, root, cfg, checkpoint_dir, cfg.resume, fingerprint, on_epoch_end, stop)
        image_size = cfg.image_size or manifest["image_size"]
        meta = model_meta(cfg, selection, classes, image_size, manifest.get("preprocessing", {}), weights.as_dict(),
                          data_sha, result, count_params(model))
    with storage.output_dir(cfg.out) as tmp:
        save_model_dir(tmp, result.model, meta)
        storage.write_json(str(tmp / HISTORY_FILE), {"schema_version": 1, "history": result.history,
                                                      "best_epoch": result.best_epoch})
    log.info("model written to %s (best epoch %d, val macro-F1 %.3f)", cfg.out, result.best_epoch, result.best_val_macro_f1)
    return {
        "out": cfg.out,
        "arch": arch,
        "strategy": selection["strategy"],
        "trainable_params": result.trainable_params,
        "reduction_vs_full": selection.get("reduction_vs_full"),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_macro_f1": result.best_val_macro_f1,
        "stopped_early": result.stopped_early,
        "device": result.device,
        "precision": result.precision,
        "seconds": round(result.seconds, 1),
    }


def model_meta(cfg: Config, selection: dict, classes: list[str], image_size: int, ingest: dict, weights: dict,
               data_sha: str, result: TrainResult, total_params: int) -> dict:
    """model.json content (see :mod:`entropy_ft.model_dir`)."""
    config = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}
    config.update(device=result.device, precision=result.precision)
    return {
        "arch": selection["arch"],
        "classes": classes,
        "preprocessing": {
            "image_size": image_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "channels": 3,
            "input": MODEL_INPUT,
            "ingest": ingest,
        },
        "selection": selection,
        "training": {
            "config": config,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_macro_f1": result.best_val_macro_f1,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "seconds": result.seconds,
        },
        "trainable_params": result.trainable_params,
        "total_params": total_params,
        **weights,
        "data_manifest_sha256": data_sha,
    }

"""Fine-tune a model on a Dataset with a layer selection; writes a Model dir.

The Model dir holds weights.safetensors, model.json (:class:`entropy_ft.artifacts.ModelMeta`)
and history.json (:class:`entropy_ft.artifacts.TrainingHistory`).

Checkpoints go to ``--checkpoint-dir`` (default: ``OUT/checkpoint``) after every epoch and on
SIGTERM; ``--resume`` continues from there, or starts afresh when there is no checkpoint yet,
so a preempted pod can always be restarted with the same command. When the run completes,
the Model dir replaces OUT, and a default checkpoint inside it goes with the old contents.
On a cluster, point ``--checkpoint-dir`` at durable storage (``s3://...``): a component's
local output folder does not survive the pod.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from entropy_ft import storage
from entropy_ft.artifacts import DatasetManifest, ModelMeta, Selection, TrainingHistory
from entropy_ft.data.format import load_manifest, manifest_sha256
from entropy_ft.data.loader import IMAGENET_MEAN, IMAGENET_STD
from entropy_ft.errors import UserError
from entropy_ft.evaluation.calibration import fit_temperature, nll, reliability, softmax
from entropy_ft.evaluation.noise import predict
from entropy_ft.logs import log
from entropy_ft.model.factory import build_model, count_params, trainable_module_names
from entropy_ft.model.model_dir import save_model_dir
from entropy_ft.options import fraction, option
from entropy_ft.training.checkpoint import checkpoint_dir_for
from entropy_ft.training.loop import EpochCallback, TrainConfig, TrainResult, train, validation_loader
from entropy_ft.training.preemption import stop_on_sigterm

MODEL_INPUT = "uint8 HxW or HxWx3 pixels, resized to image_size, replicated to 3 channels, /255, ImageNet mean/std"


@dataclass(frozen=True, kw_only=True)
class Config(TrainConfig):
    dataset: str = option(flag="DATASET", help="Dataset dir (local path or s3:// prefix) from `entropy-ft ingest`")
    selection: str = option(flag="SELECTION", help="selection.json (or its folder) from `entropy-ft select`")
    out: str = option(help="Model dir to write (local path or s3:// prefix)")
    resume: bool = option(False, help="continue from the checkpoint if there is one")
    abstain_below: float | None = option(
        None, check=fraction(0, 1), metavar="P",
        help="the served model answers 'uncertain' when its top calibrated probability is below P (default: always "
             "answers)")
    checkpoint_dir: str | None = option(
        None, help="where checkpoints go (default: $ENTROPY_FT_CHECKPOINT_ROOT/<key of OUT> if set, "
                   "else OUT/checkpoint)")


def run(cfg: Config, on_epoch_end: EpochCallback | None = None) -> dict:
    selection = Selection.read(cfg.selection)
    arch = selection.arch
    with storage.local_copy(DatasetManifest.folder_of(cfg.dataset)) as root:
        manifest = load_manifest(root)
        classes = list(manifest.classes)
        if selection.classes and list(selection.classes) != classes:
            raise UserError(f"{cfg.selection}: made for classes {selection.classes}, but {cfg.dataset} has {classes}")
        torch.manual_seed(cfg.seed)  # the new head (and, with --weights none, every layer) starts from the seed
        model, weights = build_model(arch, len(classes), selection.weights)
        if selection.weights_sha256 and weights.sha256 != selection.weights_sha256:
            raise UserError(f"{cfg.selection}: weights {selection.weights} have changed since the selection was made "
                            f"(sha256 {weights.sha256} != {selection.weights_sha256})")
        trainable = trainable_module_names(model, arch, list(selection.layers))
        if selection.trainable_modules and list(selection.trainable_modules) != trainable:
            raise UserError(f"{cfg.selection}: trainable_modules do not match its layers for {arch}")
        data_sha = manifest_sha256(root)
        checkpoint_dir = cfg.checkpoint_dir or checkpoint_dir_for(cfg.out)
        fingerprint = {"arch": arch, "classes": classes, "data_manifest_sha256": data_sha,
                       "weights_sha256": weights.sha256}
        with stop_on_sigterm() as stop:
            result = train(model, arch, trainable, root, cfg, checkpoint_dir, cfg.resume, fingerprint, on_epoch_end,
                           stop)
        calibration = calibrate(result.model, root, cfg, result.device)
        meta = model_meta(cfg, selection, classes, cfg.image_size or manifest.image_size, manifest.preprocessing,
                          weights.as_dict(), data_sha, result, count_params(model), calibration)
    with storage.output_dir(cfg.out) as tmp:
        save_model_dir(tmp, result.model, meta)
        TrainingHistory(history=result.history, best_epoch=result.best_epoch).write(str(tmp))
    log.info("model written to %s (best epoch %d, val macro-F1 %.3f)", cfg.out, result.best_epoch,
             result.best_val_macro_f1)
    return {
        "out": cfg.out,
        "arch": arch,
        "strategy": selection.strategy,
        "trainable_params": result.trainable_params,
        "reduction_vs_full": selection.reduction_vs_full,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_macro_f1": result.best_val_macro_f1,
        "stopped_early": result.stopped_early,
        "device": result.device,
        "precision": result.precision,
        "seconds": round(result.seconds, 1),
    }


def calibrate(model, root, cfg: Config, device: str) -> dict:
    """Temperature scaling fitted on the val split (fp32 logits of the kept model), with what it did to
    the val NLL and ECE; and the abstention threshold the served model applies."""
    labels, logits = predict(model, validation_loader(root, cfg, torch.device(device)), torch.device(device),
                             desc="calibrate")
    temperature = fit_temperature(logits, labels)
    before, _ = reliability(softmax(logits), labels)
    after, _ = reliability(softmax(logits, temperature), labels)
    log.info("temperature scaling on %d val images: T = %.3f, ECE %.3f -> %.3f, NLL %.3f -> %.3f", len(labels),
             temperature, before, after, nll(logits, labels), nll(logits, labels, temperature))
    return {"method": "temperature scaling", "fitted_on": "val", "val_images": int(len(labels)),
            "temperature": temperature, "val_nll": [nll(logits, labels), nll(logits, labels, temperature)],
            "val_ece": [before, after], "abstain_below": cfg.abstain_below}


def model_meta(cfg: Config, selection: Selection, classes: list[str], image_size: int, ingest: dict, weights: dict,
               data_sha: str, result: TrainResult, total_params: int, calibration: dict | None = None) -> ModelMeta:
    """model.json content."""
    config = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}
    config.update(device=result.device, precision=result.precision, data_path=result.data_path)
    return ModelMeta(
        arch=selection.arch,
        classes=classes,
        preprocessing={
            "image_size": image_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "channels": 3,
            "input": MODEL_INPUT,
            "ingest": ingest,
        },
        selection=selection.to_json(),
        training={
            "config": config,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_macro_f1": result.best_val_macro_f1,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "seconds": result.seconds,
        },
        trainable_params=result.trainable_params,
        total_params=total_params,
        **weights,
        data_manifest_sha256=data_sha,
        calibration=calibration,
    )

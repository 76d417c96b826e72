"""Fine-tuning loop: the selected layers train, the rest stays frozen (see :mod:`entropy_ft.model.freezing`).

Defaults, and why:

* AdamW, lr 1e-3, weight decay 1e-4 on conv/linear weights only (never on BatchNorm or
  biases). Adam's per-parameter step sizes suit a mix of a freshly initialised head and
  pretrained convs without per-layer tuning; 1e-3 converges within ~10 epochs on a few
  thousand images; the small decoupled decay regularises without pulling the pretrained
  weights far towards zero.
* Per-step schedule: linear warmup over the first 5% of steps, then cosine decay to zero at
  the last planned step. The warmup keeps the large, random gradients that the new head
  sends back in its first steps from wrecking the pretrained layers.
* Cross-entropy with label smoothing 0.1: the classes share most of their anatomy, and
  smoothing keeps a small dataset from driving the logits to over-confidence.
* Light MRI augmentation (:func:`entropy_ft.data.loader.train_augmentation`).
* Early stopping on validation macro-F1 (patience 3 epochs); the model kept is the best
  on validation, never the last. Macro-F1 rather than accuracy, so one class cannot
  dominate the choice.
* Speed: channels_last tensors, autocast per ``--precision``, and the frozen prefix run
  without autograd. ``--data-path``: the split held on the device and augmented there per
  batch (:mod:`entropy_ft.data.on_device`; ``auto`` on a GPU, and on the CPU where measured
  faster), or the DataLoader path (:mod:`entropy_ft.data.resumable`).

Every random draw depends on (seed, epoch, position in the epoch), and the state at any
batch boundary can be checkpointed, so a resumed run on the CPU ends with bit-identical
weights to an uninterrupted one. SIGTERM (a pod being preempted) checkpoints at the next
batch boundary and exits with 143.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from entropy_ft import storage
from entropy_ft.data.loader import LoaderConfig, to_model_input
from entropy_ft.data.on_device import DATA_PATHS, eval_batches, resolve_data_path, train_batches
from entropy_ft.data.resumable import epoch_seed, make_train_loader, train_noise
from entropy_ft.device import PRECISIONS, autocast, default_workers, grad_scaler, resolve_device, resolve_precision
from entropy_ft.errors import UserError
from entropy_ft.evaluation.metrics import accuracy, confusion_matrix, macro_f1
from entropy_ft.evaluation.noise import predict
from entropy_ft.logs import log, progress_bar
from entropy_ft.model.freezing import apply_selection, split_frozen_prefix
from entropy_ft.options import IMAGE_SIZE, Options, at_least, below, between, fraction, option
from entropy_ft.training.checkpoint import checkpoint_uri, load_checkpoint, save_checkpoint
from entropy_ft.training.preemption import Preempted, StopFlag

WARMUP_FRACTION = 0.05

EpochCallback = Callable[[int, dict], None]


TRAIN_NOISE_MODES = ("uniform", "fixed")
# torch.compile modes for the trained model; reduce-overhead adds CUDA graphs on a GPU. Off by default: it
# pays only when its compile time (paid again by every run and every resume) is won back over the run's
# epochs, which benchmarks/perf.py's compile figure measures per machine
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Options):
    """The fine-tuning recipe; every field is a flag of ``entropy-ft finetune`` (see the module docstring for why)."""

    epochs: int = option(10, check=at_least(1), help="maximum epochs (early stopping on validation macro-F1)")
    lr: float = option(1e-3, check=fraction(0, 1), help="AdamW peak learning rate (linear warmup, cosine decay)")
    weight_decay: float = option(1e-4, check=below(0, 1), help="AdamW decay on conv/linear weights")
    batch_size: int = option(32, check=at_least(1), help="training batch size")
    label_smoothing: float = option(0.1, check=below(0, 1), help="cross-entropy label smoothing")
    patience: int = option(3, check=at_least(1, "epoch"),
                           help="stop after this many epochs without a better val macro-F1")
    seed: int = option(0, help="seed of the head's init, the shuffle and the augmentation")
    image_size: int | None = option(None, check=IMAGE_SIZE, help="model input side in pixels (default: the dataset's)")
    augment: bool = option(True, flag="--no-augment", help="train without augmentation")
    # on by default: without it every model called nearly every scan notumor from sigma 0.2, and with it
    # clean accuracy moved -0.1 ± 3.0 points over 3 paired seeds (benchmarks/results/train_noise-e5.md)
    train_noise: float = option(0.2, check=between(0, 1), metavar="SIGMA_MAX",
                                help="Gaussian pixel noise while training: sigma ~ U(0, SIGMA_MAX) per image on [0, 1] "
                                     "pixels, clipped (0: none)")
    train_noise_p: float = option(0.5, check=between(0, 1), metavar="P",
                                  help="share of training images that get --train-noise")
    train_noise_mode: str = option("uniform", choices=TRAIN_NOISE_MODES,
                                   help="uniform: sigma ~ U(0, SIGMA_MAX); fixed: sigma = SIGMA_MAX, the same-sigma "
                                        "ablation (train at the sigma tested; evaluate then always scores it)")
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    precision: str = option("auto", choices=PRECISIONS,
                            help="auto: bf16 on GPUs and CPUs with native bf16, fp16 AMP on older GPUs, else fp32")
    num_workers: int | None = option(None, check=at_least(0),
                                     help="DataLoader workers of the loader path (default: 0 on CPU, up to 8 on GPU)")
    compile: str = option("off", choices=COMPILE_MODES,
                          help="torch.compile the model's training forward and backward in this mode (reduce-overhead: "
                               "also CUDA graphs on a GPU); its compile time comes first in epoch 1")
    data_path: str = option("auto", choices=DATA_PATHS,
                            help="device: the split held on the device, augmented there per batch; loader: "
                                 "DataLoader with Pillow augmentation; auto: device on GPUs, and on CPUs the "
                                 "faster one as measured (device)")

    def recipe(self) -> dict:
        """What decides the trained weights (a resume must match it); device, precision, workers, data path and
        compilation do not (both paths draw the same augmentation distribution, as both devices, compiled or not,
        compute the same model)."""
        run_only = ("device", "precision", "num_workers", "data_path", "compile")
        return {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.name not in run_only}


@dataclass
class TrainResult:
    model: nn.Module  # with the best-on-validation weights loaded
    history: list[dict]
    best_epoch: int  # 1-based
    best_val_macro_f1: float
    stopped_early: bool
    device: str
    precision: str
    data_path: str  # device or loader, as resolved
    trainable_params: int
    seconds: float


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )


def validation_loader(data_root: str | Path, cfg: TrainConfig, device: torch.device, workers: int = 0):
    """The val split in order, at the training input size, resident on the device where it fits: model
    selection and calibration read it alike."""
    return eval_batches(data_root, "val", LoaderConfig(cfg.batch_size * 2, workers, cfg.image_size, cfg.seed), device)


def loader_workers(device: torch.device) -> int:
    """DataLoader workers when not given: none on the CPU (compute threads use every core), up to 8 feeding a GPU."""
    return min(8, default_workers()) if device.type == "cuda" else 0


@dataclass
class _Progress:
    """Where the run stands; everything here goes into the checkpoint."""

    epoch: int = 0  # 0-based epoch being (or about to be) trained
    batches_done: int = 0  # within that epoch
    loss_sum: float = 0.0  # running sums of the epoch
    correct: int = 0
    seen: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def train(
    model: nn.Module,
    arch: str,
    trainable_modules: list[str],
    data_root: str | Path,
    cfg: TrainConfig,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
    on_epoch_end: EpochCallback | None = None,
    stop: StopFlag | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on the dataset at ``data_root`` (train split; val for model selection)."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    fingerprint = {**(fingerprint or {}), **cfg.recipe(), "trainable_modules": list(trainable_modules)}
    stop = stop or StopFlag()

    model.to(device, memory_format=torch.channels_last)
    params = apply_selection(model, trainable_modules)
    staged = split_frozen_prefix(model, arch)
    step_model = staged if cfg.compile == "off" else torch.compile(staged, mode=cfg.compile)
    workers = cfg.num_workers if cfg.num_workers is not None else loader_workers(device)
    data_path = resolve_data_path(cfg.data_path, device)
    if data_path == "device":
        loader, sampler = train_batches(data_root, cfg.batch_size, cfg.seed, device, cfg.image_size, cfg.augment)
    else:
        loader, sampler = make_train_loader(data_root, cfg.batch_size, cfg.seed, workers, cfg.image_size, cfg.augment)
    val_loader = validation_loader(data_root, cfg, device, workers)
    if len(sampler) == 0 or len(val_loader.dataset) == 0:
        raise UserError(f"{data_root}: training needs images in both the train and the val split")
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    optimizer = _optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))
    scaler = grad_scaler(device, precision)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    trainable_params = sum(p.numel() for p in params)
    log.info(
        "fine-tuning %s: %s trainable parameters, %d frozen blocks without autograd, %d train images, "
        "%d epochs, device %s, precision %s, %s data path%s",
        arch, f"{trainable_params:,}", len(staged.prefix), len(sampler), cfg.epochs, device, precision, data_path,
        "" if cfg.compile == "off" else f", torch.compile {cfg.compile} (the first batches compile: slow)",
    )

    state = _Progress()
    saved = load_checkpoint(checkpoint_dir, fingerprint) if (resume and checkpoint_dir) else None
    if resume and checkpoint_dir and saved is None:
        log.info("--resume: no checkpoint in %s yet, starting from the beginning", checkpoint_dir)
    elif not resume and checkpoint_dir and storage.exists(checkpoint_uri(checkpoint_dir)):
        log.warning(
            "starting afresh: the checkpoint in %s will be overwritten (pass --resume to continue it)", checkpoint_dir
        )
    best_state: dict[str, torch.Tensor] | None = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        state = _Progress(**saved["progress"])
        best_state = saved["best_model"]

    def checkpoint(rng: dict | None = None) -> None:
        if checkpoint_dir is None:
            return
        save_checkpoint(checkpoint_dir, {
            "fingerprint": fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "progress": asdict(state),
            "best_model": best_state,
            "rng": rng,
            "epoch": state.epoch,
            "batches_done": state.batches_done,
        })

    stopped_early = False
    while state.epoch < cfg.epochs:
        if state.bad_epochs >= cfg.patience:
            stopped_early = True
            break
        _seed_epoch(cfg.seed, state, saved)
        saved = None
        sampler.set_epoch(state.epoch, start=state.batches_done * cfg.batch_size)
        resumed_at_batch = state.batches_done
        train_seconds, timed_images = _train_epoch(step_model, loader, steps_per_epoch, optimizer, scheduler, scaler,
                                                   criterion, device, precision, state, cfg, stop, checkpoint)
        val_labels, val_logits = predict(model, val_loader, device, precision, desc="validate")
        cm = confusion_matrix(val_labels, val_logits.argmax(axis=1), val_logits.shape[1])
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val_labels)))
        metrics = {
            "epoch": state.epoch + 1,
            "train_loss": state.loss_sum / state.seen,
            "train_accuracy": state.correct / state.seen,
            "val_loss": val_loss,
            "val_accuracy": accuracy(cm),
            "val_macro_f1": macro_f1(cm),
            "lr": optimizer.param_groups[0]["lr"],
            # seconds and img/s cover the batches this process trained: after a mid-epoch resume
            # (resumed_at_batch > 0) that is part of an epoch, so benchmarks leave such epochs out
            "seconds": train_seconds,
            "images_per_second": timed_images / train_seconds if train_seconds > 0 else None,
            "resumed_at_batch": resumed_at_batch,
        }
        improved = metrics["val_macro_f1"] > state.best_metric
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = metrics["val_macro_f1"], state.epoch + 1, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.history.append(metrics)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f macro-F1 %.3f%s | %.1f s, %.0f img/s",
            metrics["epoch"], cfg.epochs, metrics["train_loss"], metrics["train_accuracy"],
            val_loss, metrics["val_accuracy"], metrics["val_macro_f1"], " (best)" if improved else "",
            train_seconds, metrics["images_per_second"] or 0,
        )
        state.epoch, state.batches_done, state.loss_sum, state.correct, state.seen = state.epoch + 1, 0, 0.0, 0, 0
        checkpoint()
        if on_epoch_end is not None:
            on_epoch_end(metrics["epoch"], metrics)
        if stop.requested:
            raise Preempted()
    if stopped_early:
        log.info("early stopping: validation macro-F1 has not improved for %d epochs", cfg.patience)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, state.history, state.best_epoch, state.best_metric, stopped_early, str(device), precision,
                       data_path, trainable_params, time.perf_counter() - started)


def _seed_epoch(seed: int, state: _Progress, saved: dict | None) -> None:
    """Seed the global torch RNG (dropout) from (seed, epoch), or restore it mid-epoch from a checkpoint."""
    torch.manual_seed(epoch_seed(seed, state.epoch))
    rng = saved.get("rng") if saved else None
    if rng:
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _train_epoch(staged, loader, steps_per_epoch, optimizer, scheduler, scaler, criterion, device, precision,
                 state: _Progress, cfg: TrainConfig, stop: StopFlag,
                 checkpoint: Callable[[dict | None], None]) -> tuple[float, int]:
    """One pass over the training batches, resuming at ``state.batches_done``; returns the seconds spent
    and the images trained in them (fewer than the epoch's after a mid-epoch resume)."""
    staged.train()
    bar = progress_bar(f"epoch {state.epoch + 1}/{cfg.epochs}", total=steps_per_epoch, unit="batch")
    bar.update(state.batches_done)
    refresh = max(1, steps_per_epoch // 20)
    start = time.perf_counter()
    images_this_run = 0
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    try:
        for images, labels in loader:
            if cfg.train_noise > 0:
                sigmas, g = train_noise(cfg.seed, state.epoch, state.batches_done, len(images), cfg.train_noise,
                                        cfg.train_noise_p, fixed=cfg.train_noise_mode == "fixed")
                x = to_model_input(images, device, noise_sigma=sigmas, generator=g)
            else:
                x = to_model_input(images, device)
            y = labels.to(device, non_blocking=True)
            loss, logits = train_step(staged, x, y, optimizer, scaler, criterion, device, precision)
            scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(dim=1) == y).sum()
            images_this_run += len(y)
            state.batches_done += 1
            bar.update(1)
            if state.batches_done % refresh == 0:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{(state.loss_sum + loss_sum.item()) / (state.seen + images_this_run):.3f}",
                                acc=f"{(state.correct + correct.item()) / (state.seen + images_this_run):.3f}",
                                img_s=f"{images_this_run / elapsed:.0f}")
            if stop.requested:
                _fold(state, loss_sum, correct, images_this_run)
                checkpoint(_rng_state())
                log.warning("checkpoint written at epoch %d, batch %d; exiting", state.epoch + 1, state.batches_done)
                raise Preempted()
    finally:
        bar.close()
    _fold(state, loss_sum, correct, images_this_run)
    return time.perf_counter() - start, images_this_run


def train_step(staged: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, criterion: nn.Module, device: torch.device,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch already on the device; returns (loss, logits). The bare loop of
    benchmarks/perf.py runs this same step, so its floor differs from training by the data path and the
    loop's bookkeeping alone."""
    with autocast(device, precision):
        logits = staged(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def _fold(state: _Progress, loss_sum: torch.Tensor, correct: torch.Tensor, images: int) -> None:
    """Add this run's device-side running sums into the checkpointable progress."""
    state.loss_sum += float(loss_sum.item())
    state.correct += int(correct.item())
    state.seen += images


def _rng_state() -> dict:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }

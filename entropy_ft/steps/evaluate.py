"""Evaluate a Model dir on a Dataset split under Gaussian pixel noise; writes eval.json, eval.html and eval.png.

Metrics per noise sigma: accuracy, macro-F1, balanced accuracy, per-class recall and the
confusion matrix (DESIGN section 6). Inference runs in fp32, so reported figures do not
depend on which autocast kernels a machine has.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import SCHEMA_VERSION, storage
from ..data.format import SPLITS, load_manifest, manifest_sha256
from ..data.loader import LoaderConfig, make_loader
from ..errors import UserError
from ..evaluate import DEFAULT_SIGMAS, noise_robustness
from ..logs import log
from ..model_dir import load_model_dir
from ..plots import line_figure, write_report
from ..precision import resolve_device

METRIC_KEYS = ("accuracy", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix")


def parse_sigmas(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.2"`` -> (0.0, 0.1, 0.2); every sigma must lie in [0, 1] (pixels are in [0, 1])."""
    try:
        sigmas = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--noise {text}: expected comma-separated numbers such as 0,0.1,0.2") from None
    check_sigmas(sigmas)
    return sigmas


def check_sigmas(sigmas: tuple[float, ...]) -> None:
    if not sigmas:
        raise UserError("--noise: give at least one sigma, such as 0,0.1,0.2")
    bad = [s for s in sigmas if not 0.0 <= s <= 1.0]  # also catches NaN
    if bad:
        raise UserError(f"--noise: sigma {bad[0]:g} is out of range; each sigma must be between 0 and 1 (pixels are in [0, 1])")


@dataclass(frozen=True)
class Config:
    model: str
    dataset: str
    out: str
    noise: tuple[float, ...] = DEFAULT_SIGMAS
    split: str = "test"
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_sigmas(tuple(self.noise))
        if self.split not in SPLITS:
            raise UserError(f"--split {self.split}: expected one of {', '.join(SPLITS)}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: expected at least 1")
        if self.num_workers < 0:
            raise UserError(f"--num-workers {self.num_workers}: expected 0 or more")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="Model dir (local path or s3:// prefix) from `entropy-ft finetune`")
    p.add_argument("dataset", metavar="DATASET", help="Dataset dir (local path or s3:// prefix)")
    p.add_argument("--out", required=True, help="folder for eval.json, eval.html and eval.png (local path or s3:// prefix)")
    p.add_argument("--noise", default=",".join(f"{s:g}" for s in DEFAULT_SIGMAS),
                   help="comma-separated Gaussian noise sigmas on [0, 1] pixels (default: %(default)s)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(args.model, args.dataset, args.out, parse_sigmas(args.noise), args.split, args.seed, args.batch_size,
                  args.device, args.num_workers)


def run(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    sigmas = tuple(sorted(set(float(s) for s in cfg.noise) | {0.0}))  # sigma 0 is always reported
    with storage.local_copy(cfg.dataset) as root, storage.local_copy(cfg.model) as model_path:
        manifest = load_manifest(root)
        model, meta = load_model_dir(model_path, device)
        classes = list(meta["classes"])
        if list(manifest["classes"]) != classes:
            raise UserError(f"{cfg.dataset}: classes {manifest['classes']} differ from the model's {classes} ({cfg.model})")
        image_size = int(meta["preprocessing"]["image_size"])
        loader = make_loader(root, cfg.split, LoaderConfig(cfg.batch_size, cfg.num_workers, image_size, cfg.seed), train=False)
        if len(loader.dataset) == 0:
            raise UserError(f"{cfg.dataset}: the {cfg.split} split has no images")
        rows = noise_robustness(model, loader, classes, sigmas, cfg.seed, device)
        report = eval_report(cfg, meta, classes, manifest_sha256(root), len(loader.dataset), rows)
    with storage.output_dir(cfg.out) as tmp:
        storage.write_json(str(tmp / "eval.json"), report)
        write_plot(tmp, report)
    for row in rows:
        log.info("sigma %.2f: accuracy %.3f, macro-F1 %.3f, balanced accuracy %.3f",
                 row["sigma"], row["accuracy"], row["macro_f1"], row["balanced_accuracy"])
    return {
        "out": cfg.out,
        "split": cfg.split,
        "images": report["num_images"],
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "balanced_accuracy": report["balanced_accuracy"],
        "accuracy_by_sigma": {f"{r['sigma']:g}": r["accuracy"] for r in rows},
    }


def eval_report(cfg: Config, meta: dict, classes: list[str], data_sha: str, num_images: int, rows: list[dict]) -> dict:
    """eval.json: the sigma-0 metrics at top level, one row per sigma under ``noise``."""
    clean = next(r for r in rows if r["sigma"] == 0.0)
    selection = meta.get("selection") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "arch": meta["arch"],
        "model": cfg.model,
        "dataset": cfg.dataset,
        "dataset_manifest_sha256": data_sha,
        "model_data_manifest_sha256": meta.get("data_manifest_sha256"),
        "split": cfg.split,
        "num_images": num_images,
        "classes": classes,
        "seed": cfg.seed,
        "strategy": selection.get("strategy"),
        "trainable_params": meta.get("trainable_params", selection.get("trainable_params")),
        "reduction_vs_full": selection.get("reduction_vs_full"),
        **{k: clean[k] for k in METRIC_KEYS},
        "noise": rows,
    }


def write_plot(out_dir, report: dict) -> dict[str, str]:
    """eval.html (inline SVG and a table) and eval.png: accuracy and macro-F1 against sigma."""
    rows = report["noise"]
    sigmas = [r["sigma"] for r in rows]
    fig = line_figure(
        sigmas,
        {"accuracy": [r["accuracy"] for r in rows], "macro-F1": [r["macro_f1"] for r in rows],
         "balanced accuracy": [r["balanced_accuracy"] for r in rows]},
        title=f"{report['arch']} ({report['strategy']}): robustness to Gaussian pixel noise",
        xlabel="noise sigma (pixels in [0, 1])",
        ylabel=f"{report['split']} score",
    )
    notes = [f"Model {report['model']}, {report['num_images']} {report['split']} images, noise seed {report['seed']}."]
    table = (["sigma", "accuracy", "macro-F1", "balanced accuracy"],
             [[f"{r['sigma']:g}", f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['balanced_accuracy']:.4f}"]
              for r in rows])
    return write_report(out_dir, "eval", "Noise robustness", fig, notes, table)

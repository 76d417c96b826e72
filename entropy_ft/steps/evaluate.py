"""Evaluate a Model dir on a Dataset split, or on external data, under Gaussian pixel noise; writes eval.json,
eval.html and eval.png.

Metrics per noise sigma (:class:`entropy_ft.artifacts.Evaluation`): accuracy, macro-F1,
balanced accuracy, per-class recall and the confusion matrix. Inference runs in fp32, so
reported figures do not depend on which autocast kernels a machine has. With ``--data`` the
images come from elsewhere (:mod:`entropy_ft.evaluation.external`): every split is scored,
classes are matched by name, and copies of training images are counted.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from entropy_ft import storage
from entropy_ft.artifacts import DatasetManifest, Evaluation, ModelMeta
from entropy_ft.data.format import SPLITS, load_manifest, manifest_sha256, read_split
from entropy_ft.data.loader import LoaderConfig
from entropy_ft.data.on_device import eval_batches
from entropy_ft.device import resolve_device
from entropy_ft.errors import UserError
from entropy_ft.evaluation import external, pages
from entropy_ft.evaluation.calibration import softmax
from entropy_ft.evaluation.gradcam import explain, target_layer
from entropy_ft.evaluation.metrics import classification_metrics
from entropy_ft.evaluation.noise import DEFAULT_SIGMAS, noise_robustness, parse_sigmas, predict, sigmas_problem
from entropy_ft.logs import log
from entropy_ft.model.model_dir import load_model_dir
from entropy_ft.options import Options, at_least, option

METRIC_KEYS = ("accuracy", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix", "ci",
               "per_class")


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    model: str = option(flag="MODEL", help="Model dir (local path or s3:// prefix) from `entropy-ft finetune`")
    dataset: str | None = option(None, flag="DATASET", nargs="?",
                                 help="Dataset dir (local path or s3:// prefix) whose --split is scored; or --data")
    out: str = option(help="folder for eval.json, eval.html and eval.png (local path or s3:// prefix)")
    data: str | None = option(
        None, metavar="SOURCE", help="external validation instead of DATASET: every image of another dataset, a "
                                     "Dataset dir or a raw source (folder, .zip, .tar, s3://) ingested on the fly as "
                                     "the training data was; classes matched by name, unknown ones counted and left "
                                     "out")
    training_data: str | None = option(
        None, metavar="DATASET", help="with --data: the Dataset the model was trained on (checked against model.json); "
                                      "external images that copy its images (same pixels, or pHash) are counted and "
                                      "the scores on the unseen ones reported")
    noise: tuple[float, ...] = option(DEFAULT_SIGMAS, parse=parse_sigmas, check=sigmas_problem,
                                      help="comma-separated Gaussian noise sigmas on [0, 1] pixels")
    split: str = option("test", choices=SPLITS, help="the split of DATASET to evaluate (--data: every split)")
    seed: int = option(0, help="seed of the noise")
    batch_size: int = option(64, check=at_least(1), help="images per forward pass")
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    num_workers: int = option(0, check=at_least(0), help="DataLoader workers")
    gradcam: int = option(2, check=at_least(0), metavar="N",
                          help="Grad-CAM overlays per class of up to N correctly and N wrongly answered images at "
                               "sigma 0, drawn by --seed (0: none)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.dataset) == bool(self.data):
            raise UserError("give the DATASET to evaluate or --data SOURCE for external validation"
                            + (", not both" if self.dataset else ""))
        if self.training_data and not self.data:
            raise UserError(f"--training-data {self.training_data}: only for external validation (--data)")


def run(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    with contextlib.ExitStack() as stack:
        model_path = stack.enter_context(storage.local_copy(ModelMeta.folder_of(cfg.model)))
        model, meta = load_model_dir(model_path, device)
        sigmas = evaluated_sigmas(cfg.noise, (meta.training or {}).get("config") or {})
        classes = list(meta.classes)
        if cfg.data:
            images, data_sha, report_extra = _external(cfg, meta, stack)
            synthetic = None
            loader = DataLoader(images, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
            sources = images.sources
        else:
            root = stack.enter_context(storage.local_copy(DatasetManifest.folder_of(cfg.dataset)))
            manifest = load_manifest(root)
            if list(manifest.classes) != classes:
                raise UserError(f"{cfg.dataset}: classes {manifest.classes} differ from the model's {classes} "
                                f"({cfg.model})")
            loader = eval_batches(root, cfg.split, LoaderConfig(cfg.batch_size, cfg.num_workers, meta.image_size,
                                                                cfg.seed), device)
            if len(loader.dataset) == 0:
                raise UserError(f"{cfg.dataset}: the {cfg.split} split has no images")
            images, data_sha, report_extra = loader.dataset, manifest_sha256(root), None
            synthetic = next((s["uri"] for s in manifest.sources or [] if s.get("layout") == "synthetic"), None)
            sources = read_split(root, cfg.split, columns=["source"]).column("source").to_pylist()
        clean = predict(model, loader, device, desc="sigma 0")
        rows = noise_robustness(model, loader, classes, sigmas, cfg.seed, device, meta.temperature, clean)
        samples = _gradcam(cfg, model, meta, images, clean, device, sources)
        if report_extra is not None:
            report_extra["unseen"] = _unseen_scores(clean, report_extra.pop("matched"), classes)
        report = eval_report(cfg, meta, classes, data_sha, len(images), rows, samples,
                             target_layer(model, meta.arch)[0], report_extra, synthetic)
    with storage.output_dir(cfg.out) as tmp:
        report.write(str(tmp))
        pages.write(tmp, report, samples)
    for row in rows:
        log.info("sigma %.2f: accuracy %.3f, macro-F1 %.3f, balanced accuracy %.3f",
                 row["sigma"], row["accuracy"], row["macro_f1"], row["balanced_accuracy"])
    return {
        "out": cfg.out,
        "split": report.split,
        "images": report.num_images,
        "accuracy": report.accuracy,
        "macro_f1": report.macro_f1,
        "balanced_accuracy": report.balanced_accuracy,
        "accuracy_by_sigma": {f"{r['sigma']:g}": r["accuracy"] for r in rows},
        **({"external": _external_summary(report.external)} if report.external else {}),
    }


def evaluated_sigmas(noise, train_config: dict) -> tuple[float, ...]:
    """The sigmas to score, ascending: ``noise``, 0 always, and for a model trained at one fixed sigma
    (``--train-noise-mode fixed``) that sigma, where the same-sigma ablation reads its result."""
    fixed = train_config.get("train_noise_mode") == "fixed" and (train_config.get("train_noise") or 0) > 0
    return tuple(sorted({0.0, *(float(s) for s in noise), *([float(train_config["train_noise"])] if fixed else [])}))


def _external(cfg: Config, meta: ModelMeta, stack: contextlib.ExitStack):
    """The external images the model knows the class of, the data's manifest sha256 (None for a raw
    source ingested here) and eval.json's ``external`` section (with ``matched``: per scored image,
    whether it copies a training image, None when not checked)."""
    root, ingested = stack.enter_context(_external_dataset(cfg.data, meta))
    manifest = load_manifest(root)
    ext_classes = list(manifest.classes)
    mapping = external.class_mapping(ext_classes, meta.classes)
    images = external.MappedImages(root, mapping, meta.classes, meta.image_size)
    counts = Counter(c for split in SPLITS for c in read_split(root, split, ["class_name"]).column("class_name")
                     .to_pylist())
    unknown = {c: counts[c] for c, target in mapping.items() if target is None}
    if not len(images):
        raise UserError(f"--data {cfg.data}: none of its classes ({', '.join(ext_classes)}) is one the model knows "
                        f"({', '.join(meta.classes)}), even after name normalisation; nothing to score")
    if unknown:
        log.warning("--data %s: %d images of classes the model does not know are left out: %s", cfg.data,
                    sum(unknown.values()), ", ".join(f"{c} ({n})" for c, n in unknown.items()))
    folders = {folder: name for source in manifest.sources or [] for folder, name in
               (source.get("class_aliases") or {}).items()}
    section = {"source": cfg.data, "ingested_at": ingested, "folders": folders, "classes": mapping,
               "images": dict(counts),
               "unknown": unknown, "unknown_images": sum(unknown.values()), "scored": len(images),
               "missing": [c for c in meta.classes if c not in mapping.values()]}
    if cfg.training_data:
        matches = _training_matches(cfg.training_data, meta, root, stack)
        scored = [matches[p] for p in images.positions]
        section["duplicates"] = {"training_data": cfg.training_data, **external.duplicate_summary(scored)}
        section["matched"] = [m is not None for m in scored]
        if section["duplicates"]["duplicates"]:
            log.warning("--data %s: %d of the %d scored images copy training images (%d exact, %d near): they are "
                        "not unseen; see external.unseen", cfg.data, section["duplicates"]["duplicates"],
                        len(images), section["duplicates"]["exact"], section["duplicates"]["near"])
    else:
        section["duplicates"] = None
        section["matched"] = None
        log.warning("--data %s: not checked for copies of training images (pass --training-data)", cfg.data)
    return images, None if ingested else manifest_sha256(root), section


@contextlib.contextmanager
def _external_dataset(uri: str, meta: ModelMeta) -> Iterator[tuple[Path, int | None]]:
    """(a local Dataset dir, the image size it was ingested at here or None): a Dataset as it is, a
    raw source ingested into a temporary folder at the training data's ingest size (else the model's
    input size), so its pixels go through the same preprocessing the training images did."""
    if storage.exists(storage.join(uri.rstrip("/"), DatasetManifest.FILE)):
        with storage.local_copy(DatasetManifest.folder_of(uri)) as root:
            yield root, None
        return
    from entropy_ft.steps import ingest

    size = int((meta.preprocessing.get("ingest") or {}).get("image_size") or meta.image_size)
    with tempfile.TemporaryDirectory(prefix="entropy-ft-external-") as tmp:
        log.info("--data %s: no Dataset there; ingesting it at %d px (its splits do not matter: every image is "
                 "scored)", uri, size)
        try:
            ingest.run(ingest.Config(sources=(uri,), out=str(Path(tmp, "data")), image_size=size, external=True))
        except UserError as exc:
            raise UserError(f"--data {uri}: {exc}") from None
        yield Path(tmp, "data"), size


def _training_matches(uri: str, meta: ModelMeta, ext_root: Path, stack: contextlib.ExitStack) -> list:
    """Per external image (all splits, in order): its copy in the training Dataset, if any."""
    train_root = stack.enter_context(storage.local_copy(DatasetManifest.folder_of(uri)))
    sha = manifest_sha256(train_root)
    if meta.data_manifest_sha256 and sha != meta.data_manifest_sha256:
        raise UserError(f"--training-data {uri}: not the Dataset this model was trained on (manifest sha256 "
                        f"{sha[:12]}..., model.json records {meta.data_manifest_sha256[:12]}...)")
    train = external.dataset_hashes(train_root)
    shas, phashes, _ = external.dataset_hashes(ext_root)
    return external.training_matches(*train, shas, phashes)


def _unseen_scores(clean, matched: list[bool] | None, classes: list[str]) -> dict | None:
    """Accuracy, macro-F1 and balanced accuracy at sigma 0 on the external images no training image copies."""
    if matched is None:
        return None
    labels, logits = clean
    keep = ~np.asarray(matched, dtype=bool)
    if not keep.any():
        return {"images": 0}
    scores = classification_metrics(labels[keep], logits[keep].argmax(axis=1), classes)
    return {"images": int(keep.sum()), **{k: scores[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}}


def _external_summary(section: dict) -> dict:
    """The numbers of eval.json's ``external`` section that the step's one-line summary carries."""
    duplicates = section.get("duplicates") or {}
    return {"scored": section["scored"], "unknown_images": section["unknown_images"],
            **({"duplicates": duplicates["duplicates"]} if duplicates else {}),
            **({"unseen": section["unseen"]} if section.get("unseen") else {})}


def _gradcam(cfg: Config, model, meta: ModelMeta, images, clean, device, sources: list[str]) -> list[dict]:
    """The Grad-CAM sample (:func:`entropy_ft.evaluation.gradcam.explain`), each with its source file."""
    if not cfg.gradcam:
        return []
    labels, logits = clean
    samples = explain(model, meta.arch, images.pixels, labels, logits, softmax(logits, meta.temperature),
                      cfg.gradcam, cfg.seed, device, cfg.batch_size)
    return [{**s, "source": sources[s["index"]]} for s in samples]


def eval_report(cfg: Config, meta: ModelMeta, classes: list[str], data_sha: str, num_images: int,
                rows: list[dict], samples: list[dict], layer: str | None, external_section: dict | None = None,
                synthetic: str | None = None) -> Evaluation:
    """eval.json: the sigma-0 metrics at top level, one row per sigma under ``noise``, which images
    the Grad-CAM figure shows and, for external data, how its classes map and what copies training images."""
    clean = next(r for r in rows if r["sigma"] == 0.0)
    return Evaluation(
        arch=meta.arch,
        model=cfg.model,
        dataset=cfg.dataset or cfg.data,
        dataset_manifest_sha256=data_sha,
        model_data_manifest_sha256=meta.data_manifest_sha256,
        split="all" if cfg.data else cfg.split,
        num_images=num_images,
        classes=classes,
        seed=cfg.seed,
        strategy=meta.selection.get("strategy"),
        trainable_params=meta.trainable_params,
        reduction_vs_full=meta.selection.get("reduction_vs_full"),
        **{k: clean[k] for k in METRIC_KEYS},
        calibration={"temperature": meta.temperature, "abstain_below": meta.abstain_below,
                     "ece": clean["ece"], "ece_uncalibrated": clean["ece_uncalibrated"],
                     "reliability": clean["reliability"], "coverage": clean["coverage"]},
        noise=rows,
        gradcam={"per_class": cfg.gradcam, "seed": cfg.seed, "layer": layer, "images": [
            {"index": s["index"], "source": s["source"], "class": classes[s["label"]],
             "predicted": classes[s["predicted"]], "probability": s["probability"], "correct": s["correct"]}
            for s in samples]} if cfg.gradcam else None,
        external=external_section,
        synthetic=synthetic,
    )

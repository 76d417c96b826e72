"""Evaluate a Model dir on a Dataset split under Gaussian pixel noise; writes eval.json, eval.html and eval.png.

Metrics per noise sigma (:class:`entropy_ft.artifacts.Evaluation`): accuracy, macro-F1,
balanced accuracy, per-class recall and the confusion matrix. Inference runs in fp32, so
reported figures do not depend on which autocast kernels a machine has.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_ft import storage
from entropy_ft.artifacts import DatasetManifest, Evaluation, ModelMeta
from entropy_ft.data.format import SPLITS, load_manifest, manifest_sha256, read_split
from entropy_ft.data.loader import LoaderConfig, make_loader
from entropy_ft.device import resolve_device
from entropy_ft.errors import UserError
from entropy_ft.evaluation.calibration import softmax
from entropy_ft.evaluation.gradcam import explain, target_layer
from entropy_ft.evaluation.noise import DEFAULT_SIGMAS, noise_robustness, parse_sigmas, predict, sigmas_problem
from entropy_ft.logs import log
from entropy_ft.model.model_dir import load_model_dir
from entropy_ft.options import Options, at_least, option
from entropy_ft.plots import image_grid, line_figure, png_bytes, write_report

METRIC_KEYS = ("accuracy", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix", "ci",
               "per_class")


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    model: str = option(flag="MODEL", help="Model dir (local path or s3:// prefix) from `entropy-ft finetune`")
    dataset: str = option(flag="DATASET", help="Dataset dir (local path or s3:// prefix)")
    out: str = option(help="folder for eval.json, eval.html and eval.png (local path or s3:// prefix)")
    noise: tuple[float, ...] = option(DEFAULT_SIGMAS, parse=parse_sigmas, check=sigmas_problem,
                                      help="comma-separated Gaussian noise sigmas on [0, 1] pixels")
    split: str = option("test", choices=SPLITS, help="the split to evaluate")
    seed: int = option(0, help="seed of the noise")
    batch_size: int = option(64, check=at_least(1), help="images per forward pass")
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    num_workers: int = option(0, check=at_least(0), help="DataLoader workers")
    gradcam: int = option(2, check=at_least(0), metavar="N",
                          help="Grad-CAM overlays per class of up to N correctly and N wrongly answered images at "
                               "sigma 0, drawn by --seed (0: none)")


def run(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    sigmas = tuple(sorted(set(float(s) for s in cfg.noise) | {0.0}))  # sigma 0 is always reported
    with storage.local_copy(DatasetManifest.folder_of(cfg.dataset)) as root, \
            storage.local_copy(ModelMeta.folder_of(cfg.model)) as model_path:
        manifest = load_manifest(root)
        model, meta = load_model_dir(model_path, device)
        classes = list(meta.classes)
        if list(manifest.classes) != classes:
            raise UserError(f"{cfg.dataset}: classes {manifest.classes} differ from the model's {classes} "
                            f"({cfg.model})")
        loader = make_loader(root, cfg.split, LoaderConfig(cfg.batch_size, cfg.num_workers, meta.image_size, cfg.seed),
                             train=False)
        if len(loader.dataset) == 0:
            raise UserError(f"{cfg.dataset}: the {cfg.split} split has no images")
        clean = predict(model, loader, device, desc="sigma 0")
        rows = noise_robustness(model, loader, classes, sigmas, cfg.seed, device, meta.temperature, clean)
        samples = _gradcam(cfg, model, meta, loader.dataset, clean, device, root)
        report = eval_report(cfg, meta, classes, manifest_sha256(root), len(loader.dataset), rows, samples,
                             target_layer(model, meta.arch)[0])
    with storage.output_dir(cfg.out) as tmp:
        report.write(str(tmp))
        write_plot(tmp, report, gradcam_figure(samples, classes, cfg.gradcam) if samples else None)
    for row in rows:
        log.info("sigma %.2f: accuracy %.3f, macro-F1 %.3f, balanced accuracy %.3f",
                 row["sigma"], row["accuracy"], row["macro_f1"], row["balanced_accuracy"])
    return {
        "out": cfg.out,
        "split": cfg.split,
        "images": report.num_images,
        "accuracy": report.accuracy,
        "macro_f1": report.macro_f1,
        "balanced_accuracy": report.balanced_accuracy,
        "accuracy_by_sigma": {f"{r['sigma']:g}": r["accuracy"] for r in rows},
    }


def _gradcam(cfg: Config, model, meta: ModelMeta, images, clean, device, root) -> list[dict]:
    """The Grad-CAM sample (:func:`entropy_ft.evaluation.gradcam.explain`), each with its source file."""
    if not cfg.gradcam:
        return []
    labels, logits = clean
    samples = explain(model, meta.arch, images.pixels, labels, logits, softmax(logits, meta.temperature),
                      cfg.gradcam, cfg.seed, device, cfg.batch_size)
    sources = read_split(root, cfg.split, columns=["source"]).column("source").to_pylist()
    return [{**s, "source": sources[s["index"]]} for s in samples]


def gradcam_figure(samples: list[dict], classes: list[str], per_class: int):
    """One row per class: ``per_class`` columns of correctly answered images (blank where there are
    fewer), then its wrongly answered ones; each captioned with the answer and its probability."""
    rows = []
    for c, name in enumerate(classes):
        right = [_cell(s, classes) for s in samples if s["label"] == c and s["correct"]]
        wrong = [_cell(s, classes) for s in samples if s["label"] == c and not s["correct"]]
        rows.append((name, [*right, *[None] * (per_class - len(right)), *wrong]))
    return image_grid(rows, title="Where the model looks: Grad-CAM of the predicted class")


def _cell(sample: dict, classes: list[str]) -> tuple:
    verdict, colour = ("right", "#2b8a3e") if sample["correct"] else ("WRONG", "#c92a2a")
    return sample["overlay"], f"{verdict}: {classes[sample['predicted']]} {sample['probability']:.2f}", colour


def eval_report(cfg: Config, meta: ModelMeta, classes: list[str], data_sha: str, num_images: int,
                rows: list[dict], samples: list[dict], layer: str | None) -> Evaluation:
    """eval.json: the sigma-0 metrics at top level, one row per sigma under ``noise``, and which
    images the Grad-CAM figure shows."""
    clean = next(r for r in rows if r["sigma"] == 0.0)
    return Evaluation(
        arch=meta.arch,
        model=cfg.model,
        dataset=cfg.dataset,
        dataset_manifest_sha256=data_sha,
        model_data_manifest_sha256=meta.data_manifest_sha256,
        split=cfg.split,
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
    )


def write_plot(out_dir, report: Evaluation, gradcam=None) -> dict[str, str]:
    """eval.html (inline SVG and a table) and eval.png: accuracy and macro-F1 against sigma; with a
    Grad-CAM figure, also its section in eval.html and gradcam.png (MLflow shows PNGs, not HTML)."""
    rows = report.noise
    sigmas = [r["sigma"] for r in rows]
    fig = line_figure(
        sigmas,
        {"accuracy": [r["accuracy"] for r in rows], "macro-F1": [r["macro_f1"] for r in rows],
         "balanced accuracy": [r["balanced_accuracy"] for r in rows]},
        title=f"{report.arch} ({report.strategy}): robustness to Gaussian pixel noise",
        xlabel="noise sigma (pixels in [0, 1])",
        ylabel=f"{report.split} score",
    )
    notes = [f"Model {report.model}, {report.num_images} {report.split} images, noise seed {report.seed}. "
             "Brackets: 95% confidence intervals (bootstrap over images; Wilson intervals for the per-class rates)."]
    table = (["sigma", "accuracy", "macro-F1", "balanced accuracy", "ECE"],
             [[f"{r['sigma']:g}", *(_with_ci(r[m], (r.get("ci") or {}).get(m))
                                   for m in ("accuracy", "macro_f1", "balanced_accuracy")),
               _with_ci(r.get("ece"), None)] for r in rows])
    per_class = (["class", *RATE_LABELS.values()],
                 [[name, *(_with_ci(rates[key]["value"], rates[key]["ci"]) for key in RATE_LABELS)]
                  for name, rates in (report.per_class or {}).items()])
    sections = [("Per class at sigma 0", per_class, ["One class against the rest; Wilson 95% intervals. n/a: no "
                                                     "images to count (for example PPV of a class never predicted)."]),
                *_calibration_sections(report)]
    if gradcam is not None:
        sections.append(("Where the model looks (Grad-CAM)", gradcam, [
            f"Images of the {report.split} split drawn per class with seed {report.seed}: up to "
            f"{report.gradcam['per_class']} the model answers correctly, then up to as many it gets wrong. Red-yellow: "
            f"the regions that raise the predicted class's score most (Grad-CAM at {report.gradcam['layer']}, each map "
            "scaled to its own maximum); the scan is unchanged where the model does not look. Which files these "
            "are: eval.json, key gradcam."]))
        (out_dir / "gradcam.png").write_bytes(png_bytes(gradcam))
    return write_report(out_dir, "eval", "Noise robustness", fig, notes, table, sections)


def _calibration_sections(report: Evaluation) -> list:
    """The reliability diagram and the coverage curve at sigma 0, when eval.json has them."""
    cal = report.calibration or {}
    if not cal.get("reliability"):
        return []
    by_bin = {round(b["low"], 6): b for b in cal["reliability"]}
    width = cal["reliability"][0]["high"] - cal["reliability"][0]["low"]
    lows = [round(k * width, 6) for k in range(round(1 / width))]
    mids = [low + width / 2 for low in lows]
    reliability_fig = line_figure(mids, {"accuracy in the bin": [by_bin[low]["accuracy"] if low in by_bin
                                                                 else float("nan") for low in lows],
                                         "perfect calibration": mids},
                                  title="Reliability at sigma 0 (calibrated probabilities)",
                                  xlabel="top probability (bin centre)", ylabel="accuracy")
    curve = cal["coverage"]
    coverage_fig = line_figure([c["threshold"] for c in curve],
                               {"share answered": [c["coverage"] for c in curve],
                                "accuracy of the answers": [c["accuracy"] if c["accuracy"] is not None
                                                            else float("nan") for c in curve]},
                               title="Answering only when sure, at sigma 0",
                               xlabel="abstention threshold on the top probability", ylabel="share / accuracy")
    notes = [f"Temperature scaling (fitted on the val split): T = {cal['temperature']:.3f}. Expected calibration "
             f"error {cal['ece']:.4f} with it, {cal['ece_uncalibrated']:.4f} without (15 equal-width bins of "
             "confidence)."]
    threshold = cal.get("abstain_below")
    if threshold is not None:
        at = max((c for c in curve if c["threshold"] <= threshold), key=lambda c: c["threshold"])
        notes.append(f"The served model answers 'uncertain' below {threshold:g}: at {at['threshold']:g} it "
                     f"answers {100 * at['coverage']:.1f}% of the images, "
                     f"{_with_ci(at['accuracy'], None)} of them correctly.")
    return [("Calibration", reliability_fig, notes),
            ("Coverage against accuracy", coverage_fig, ["Images whose top probability is below the threshold "
                                                         "get 'uncertain' instead of a class."])]


RATE_LABELS = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV"}


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    """``0.9612 [0.9501, 0.9712]``; ``n/a`` where a rate has no images to count."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

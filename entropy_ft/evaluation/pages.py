"""The pages a reviewer reads beside eval.json: eval.html (the noise curve, per-class rates with their
intervals, calibration and coverage, external data, Grad-CAM), eval.png and gradcam.png.

Rendering only: every number comes from the :class:`entropy_ft.artifacts.Evaluation` that
``entropy-ft evaluate`` has already written, so the pages can never disagree with eval.json.
"""

from __future__ import annotations

from pathlib import Path

from entropy_ft.artifacts import Evaluation
from entropy_ft.plots import image_grid, line_figure, png_bytes, write_report

SYNTHETIC_NOTE = ("Synthetic data ({source}): phantoms drawn by entropy-ft, not scans, so these scores show the "
                  "pipeline working, not how a model does on MRI. The same pipeline on a real archive: "
                  "entropy-ft run --data brain-tumor-mri-kaggle.zip (docs/ingestion.md).")


def write(out_dir: Path, report: Evaluation, samples: list[dict]) -> dict[str, str]:
    """eval.html (inline SVG and a table) and eval.png: accuracy and macro-F1 against sigma; with Grad-CAM
    samples, also their figure as a section of eval.html and as gradcam.png (MLflow shows PNGs, not HTML)."""
    gradcam = gradcam_figure(samples, report.classes, report.gradcam["per_class"]) if samples else None
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
    if report.synthetic:
        notes.insert(0, SYNTHETIC_NOTE.format(source=report.synthetic))
    table = (["sigma", "accuracy", "macro-F1", "balanced accuracy", "ECE"],
             [[f"{r['sigma']:g}", *(_with_ci(r[m], (r.get("ci") or {}).get(m))
                                   for m in ("accuracy", "macro_f1", "balanced_accuracy")),
               _with_ci(r.get("ece"), None)] for r in rows])
    per_class = (["class", *RATE_LABELS.values()],
                 [[name, *(_with_ci(rates[key]["value"], rates[key]["ci"]) for key in RATE_LABELS)]
                  for name, rates in (report.per_class or {}).items()])
    sections = [*_external_sections(report.external),
                ("Per class at sigma 0", per_class, ["One class against the rest; Wilson 95% intervals. n/a: no "
                                                     "images to count (for example PPV of a class never predicted)."]),
                *_calibration_sections(report)]
    if gradcam is not None:
        sections.append(("Where the model looks (Grad-CAM)", gradcam, [
            f"Images ({report.split} split) drawn per class with seed {report.seed}: up to "
            f"{report.gradcam['per_class']} the model answers correctly, then up to as many it gets wrong. Red-yellow: "
            f"the regions that raise the predicted class's score most (Grad-CAM at {report.gradcam['layer']}, each map "
            "scaled to its own maximum); the scan is unchanged where the model does not look. Which files these "
            "are: eval.json, key gradcam."]))
        (out_dir / "gradcam.png").write_bytes(png_bytes(gradcam))
    return write_report(out_dir, "eval", "Noise robustness", fig, notes, table, sections)


def _external_sections(section: dict | None) -> list:
    """For external data: how its classes map onto the model's, and how many images copy training images."""
    if not section:
        return []
    folders = {}
    for folder, name in section.get("folders", {}).items():
        folders.setdefault(name, []).append(folder)
    mapping = (["class in the data (its folders, where named otherwise)", "the model's class", "images"],
               [[name + (f" ({', '.join(folders[name])})" if name in folders else ""), target or "unknown: left out",
                 section["images"].get(name, 0)] for name, target in section["classes"].items()])
    notes = [f"Data {section['source']}"
             + (f", ingested here at {section['ingested_at']} px" if section["ingested_at"] else "")
             + f": {section['scored']} images scored (every split), {section['unknown_images']} of classes the model "
               "does not know left out." + (f" No images of: {', '.join(section['missing'])}." if section["missing"]
                                            else "")]
    duplicates, unseen = section.get("duplicates"), section.get("unseen")
    if duplicates is None:
        notes.append("Not checked for copies of training images (no --training-data): the scores may include "
                     "images the model was trained on.")
    else:
        notes.append(f"Copies of the training data ({duplicates['training_data']}): {duplicates['duplicates']} of "
                     f"{duplicates['images']} scored images (identical pixels: {duplicates['exact']}, near copies by "
                     f"pHash: {duplicates['near']}); in its train split {duplicates['by_split']['train']}"
                     f", val {duplicates['by_split']['val']}, test {duplicates['by_split']['test']}.")
        if unseen and unseen["images"]:
            notes.append(f"On the {unseen['images']} unseen images alone: accuracy {unseen['accuracy']:.4f}, "
                         f"macro-F1 {unseen['macro_f1']:.4f}, balanced accuracy {unseen['balanced_accuracy']:.4f}.")
        else:
            notes.append("No image is unseen: every one copies a training image.")
    return [("External validation", mapping, notes)]


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

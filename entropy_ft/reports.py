"""Markdown summaries for the KFP UI: short tables a reviewer reads without opening files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from entropy_ft.artifacts import DatasetManifest


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def dataset_markdown(manifest: DatasetManifest) -> str:
    """Images per split and class, duplicates and quarantine of a Dataset manifest."""
    classes = manifest.classes
    rows = [[split, *(manifest.counts[split].get(c, 0) for c in classes), manifest.totals[split]]
            for split in ("train", "val", "test")]
    text = f"# Dataset\n\n{manifest.image_size} px, {manifest.image_encoding}\n\n"
    text += md_table(["split", *classes, "total"], rows)
    dup = manifest.duplicates
    summary = dup.get("summary") or {}
    if summary:
        text += f"\n## Duplicates (policy: {dup.get('policy', 'report')})\n\n"
        text += md_table(["finding", "count"], [[k, v] for k, v in summary.items()])
    quarantine = manifest.quarantine
    text += f"\n## Quarantine\n\n{len(quarantine)} file(s) skipped\n"
    if quarantine:
        text += "\n" + md_table(["file", "reason"], [[q.get("file"), q.get("reason")] for q in quarantine[:50]])
    return text


def registration_markdown(summary: dict) -> str:
    """What the register step decided, for the KFP UI, with the head-to-head evidence when there was one."""
    rows = [[k, summary[k]] for k in sorted(summary) if not isinstance(summary[k], (dict, list))]
    text = "# Model registration\n\n" + md_table(["field", "value"], rows)
    comparisons = summary.get("comparison") or {}
    if comparisons:
        text += ("\n## Head to head with the champion, on the same images\n\n"
                 + md_table(["sigma", "metric", "images", "candidate", "champion", "delta [95% CI]", "p (better)",
                             "p (worse)", "test"],
                            [[sigma, c["metric"], c["images"], _num(c["candidate"]), _num(c["champion"]),
                              _num(c["delta"], [c["ci_low"], c["ci_high"]]), f"{c['p_better']:.4g}",
                              f"{c['p_worse']:.4g}", c["test"]] for sigma, c in comparisons.items()]))
    if summary.get("drift"):
        text += drift_markdown(summary["drift"])
    return text


def drift_sentence(drift: Mapping) -> str:
    """One line on drift against the champion's training data, for the model card."""
    if "unavailable" in drift:
        return f"Drift against the champion's training data: not measured ({drift['unavailable']})"
    f, cb, it = drift["features"], drift["class_balance"], drift["intensity"]
    head = f"Drift against champion v{drift.get('champion')}'s training data: "
    mix = f"class mix total variation {cb['total_variation']:.3f} (chi-square p={cb['chi2_p']:.3g})"
    if not f:
        return head + f"no new training images; {mix}"
    verdict = "**drift**" if drift["drift"] else "no drift"
    return (head + f"{verdict} (domain-classifier AUC {f['domain_auc']:.3f}, p={f['p_value']:.3g}, threshold "
            f"{drift['threshold']:.2f}, on {drift['images']['new_in_candidate'] or 'all'} new images); {mix}; mean "
            f"intensity KS {it['mean_ks']:.3f} (p={it['mean_p']:.3g})")


def drift_markdown(drift: Mapping) -> str:
    """The drift section of the registration report: each view with its test."""
    text = "\n## Drift against the champion's training data\n\n"
    if "unavailable" in drift:
        return text + f"Not measured: {drift['unavailable']}.\n"
    f, cb, it, n = drift["features"], drift["class_balance"], drift["intensity"], drift["images"]
    text += (f"Reference: {drift.get('reference')} (champion v{drift.get('champion')}). Verdict: "
             f"**{'drift' if drift['drift'] else 'no drift'}** (flag at domain AUC >= {drift['threshold']:.2f}).")
    rows = [["class mix", f"TV {cb['total_variation']:.3f}", f"{cb['chi2_p']:.3g}", "chi-square homogeneity"]]
    if f:
        new = f"{n['new_in_candidate']:,} new" if n["new_in_candidate"] else "training"
        text += (f" Sampled: {n['reference']} of the champion's training images, {n['candidate']} of this run's "
                 f"{new} ones.")
        rows = [["penultimate features", f"AUC {f['domain_auc']:.3f}", f"{f['p_value']:.3g}",
                 f"logistic-regression domain classifier, 5-fold CV, {f['permutations']} permutations"], *rows,
                ["mean intensity", f"KS {it['mean_ks']:.3f} ({it['mean_reference']:.3f} -> {it['mean_candidate']:.3f})",
                 f"{it['mean_p']:.3g}", "two-sample Kolmogorov-Smirnov"],
                ["intensity std", f"KS {it['std_ks']:.3f} ({it['std_reference']:.3f} -> {it['std_candidate']:.3f})",
                 f"{it['std_p']:.3g}", "two-sample Kolmogorov-Smirnov"]]
    else:
        text += " Every training image of this run is in the champion's data: only the class mix is compared."
    text += "\n\n" + md_table(["view", "score", "p-value", "test"], rows)
    classes = sorted(cb["reference"])
    text += "\nClass shares (champion's data -> this run's):\n\n" + md_table(
        ["class", "champion", "this run"], [[c, f"{cb['reference'][c]:.3f}", f"{cb['candidate'][c]:.3f}"]
                                             for c in classes])
    return text


def flatten_numbers(values: Mapping, prefix: str = "") -> dict[str, float]:
    """Finite numbers from a (nested) mapping, keys joined with ``_``; everything else dropped.

    What a step's summary or metrics dict becomes as MLflow or KFP metrics."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


INTENDED_USE = (
    "Research and decision support: sorting single T1 contrast-enhanced brain MRI slices into the "
    "classes below, for a radiologist or researcher who reviews every result. Not a medical device, "
    "not validated for diagnosis, and not for images unlike the training data (other sequences, "
    "modalities, anatomy or scanners)."
)


def model_card(model_name: str, version: str, meta: Mapping, evaluation: Mapping, gate: Mapping,
               drift: Mapping | None = None, manifest: Mapping | None = None, dataset: str | None = None,
               dataset_digest: str | None = None) -> str:
    """The registered version's description in the MLflow UI: what a reviewer needs before trusting it.

    ``meta`` is model.json, ``evaluation`` eval.json, ``gate`` the register step's decision
    (gate_metric, value, champion_before, promoted, reason with the head-to-head evidence), ``drift`` the
    drift report against the champion's training data (or why there is none), ``manifest``
    the Dataset's manifest.json (at ``dataset``, its sha256 ``dataset_digest``) when the register
    step could read it.
    """
    selection = meta.get("selection") or {}
    config = (meta.get("training") or {}).get("config") or {}
    lines = [f"# {model_name} v{version}", "", "## Intended use", "", INTENDED_USE, ""]
    lines += ["## Data", ""]
    trained_on = meta.get("data_manifest_sha256")
    lines.append(f"- Dataset {dataset or evaluation.get('dataset') or 'n/a'}, manifest sha256 "
                 f"`{dataset_digest or trained_on}`")
    if dataset_digest and trained_on and dataset_digest != trained_on:
        lines.append(f"- **The model was trained on other data** (manifest sha256 `{trained_on}`): the figures "
                     "below may not describe this dataset.")
    if manifest:
        totals = manifest.get("totals") or {}
        lines.append("- Images: " + ", ".join(f"{split} {n:,}" for split, n in totals.items()))
        dup = (manifest.get("duplicates") or {}).get("summary") or {}
        if dup:
            lines.append(f"- Duplicates (policy {(manifest.get('duplicates') or {}).get('policy', 'report')}): "
                         f"{dup.get('exact_groups', 0)} exact and {dup.get('near_groups', 0)} near groups, "
                         f"{dup.get('cross_split_exact_groups', 0) + dup.get('cross_split_near_groups', 0)} "
                         f"crossing splits, {dup.get('removed', 0)} removed")
        lines.append(f"- Quarantined files: {len(manifest.get('quarantine') or [])}")
    if drift:
        lines.append(f"- {drift_sentence(drift)}")
    size = (meta.get("preprocessing") or {}).get("image_size")
    lines.append(f"- Classes: {', '.join(meta.get('classes') or [])}; input {size} px")
    lines += ["", "## Model and layer selection", ""]
    lines.append(f"- {meta.get('arch')} from weights {meta.get('weights')} (sha256 `{meta.get('weights_sha256')}`)")
    reduction = selection.get("reduction_vs_full")
    lines.append(f"- Strategy {selection.get('strategy')}"
                 + (f", rule {selection['rule']}" if selection.get("rule") else "")
                 + f": {len(selection.get('layers') or [])} conv layers unfrozen, "
                 f"{meta.get('trainable_params') or 0:,} trainable parameters"
                 + (f" ({100 * reduction:.1f}% fewer than full fine-tuning)" if reduction is not None else ""))
    recipe = ", ".join(f"{k} {config[k]}" for k in ("epochs", "lr", "batch_size", "weight_decay", "label_smoothing",
                                                      "seed", "precision") if k in config)
    lines.append(f"- Recipe: {recipe or 'n/a'}")
    lines += ["", f"## Test metrics ({evaluation.get('num_images')} {evaluation.get('split', 'test')} images)", ""]
    rows = [[f"{row['sigma']:g}", *(_num(row.get(m), (row.get("ci") or {}).get(m))
                                    for m in ("accuracy", "macro_f1", "balanced_accuracy"))]
            for row in evaluation.get("noise") or []]
    lines.append(md_table(["noise sigma", "accuracy [95% CI]", "macro-F1 [95% CI]", "balanced accuracy [95% CI]"],
                          rows))
    per_class = evaluation.get("per_class") or {}
    if per_class:
        lines.append("Per class at sigma 0, one class against the rest (Wilson 95% CIs):\n")
        lines.append(md_table(["class", "sensitivity", "specificity", "PPV", "NPV"], [
            [name, *(_num(rates[k]["value"], rates[k]["ci"]) for k in ("sensitivity", "specificity", "ppv", "npv"))]
            for name, rates in per_class.items()]))
    lines += ["", "## Registration gate", ""]
    lines.append(f"- Metric {gate.get('gate_metric')}; this version on its own test images: {_num(gate.get('value'))}")
    lines.append(f"- Champion before: {'v' + str(gate['champion_before']) if gate.get('champion_before') else 'none'}")
    lines.append(f"- Decision: {'promoted to champion' if gate.get('promoted') else 'not promoted'}: "
                 f"{gate.get('reason')}")
    lines += ["", "## Limitations", ""]
    lines.append("- The test images come from the same sources as the training images; no external validation.")
    noisy = [row for row in evaluation.get("noise") or [] if row.get("sigma")]
    if noisy:
        worst = min(noisy, key=lambda row: row.get("accuracy") or 0.0)
        lines.append(f"- Under Gaussian pixel noise accuracy falls to {_num(worst.get('accuracy'))} at sigma "
                     f"{worst['sigma']:g}: noisy or low-quality scans need a human read.")
    cal = evaluation.get("calibration") or {}
    if cal.get("ece") is not None:
        lines.append(f"- Probabilities are temperature-scaled on the val split (T = {cal.get('temperature', 1.0):.3f});"
                     " "
                     f"expected calibration error on the test images {cal['ece']:.4f} "
                     f"({cal.get('ece_uncalibrated', float('nan')):.4f} before scaling)"
                     + (f"; answers below {cal['abstain_below']:g} are 'uncertain'." if cal.get("abstain_below")
                        else "."))
    else:
        lines.append("- Probabilities are the softmax of the logits, not calibrated.")
    return "\n".join(lines) + "\n"


def _num(value: object, ci: Sequence[float] | None = None) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

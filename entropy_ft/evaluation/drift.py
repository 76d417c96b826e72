"""Has the data moved away from what the champion was trained on? Three views, one flag.

Scheduled retraining on a growing bucket should notice when new scans stop looking like the
old ones (another scanner, another protocol, another patient mix) before anyone trusts a
metric computed on them. The register step compares the candidate's training data (train + val)
with the champion's:

* **class balance**: total variation distance between the two class mixes, and the chi-square
  test of homogeneity on the counts (``scipy.stats.chi2_contingency``);
* **intensity**: per-image mean and standard deviation of the stored pixels on [0, 1], each
  compared with the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``);
* **features**: a domain classifier on the champion's penultimate features (logistic regression,
  5-fold stratified cross-validation; ``sklearn.model_selection.permutation_test_score``) whose
  ROC AUC is the shift score: 0.5 when the model cannot tell the two apart, 1.0 when it always
  can. Its permutation p-value says whether the AUC is above chance.

Images the champion's data already has are left out of the candidate's sample (by pixel hash):
a growing bucket shares most of its images with last week's, and the question is whether the
new ones look like the old.

Only the feature score sets the flag (``drift`` when AUC >= threshold): it is what the model
itself sees; a shifted class mix or brightness that leaves the features alone is reported but
does not warn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from scipy import stats

from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.data.loader import ParquetImages
from entropy_ft.data.sample import ModelInputs
from entropy_ft.device import resolve_device
from entropy_ft.errors import UserError
from entropy_ft.logs import log
from entropy_ft.model.archs import head_module_name
from entropy_ft.model.model_dir import load_model_dir

DEFAULT_THRESHOLD = 0.75  # domain-classifier AUC from which the data counts as drifted
SAMPLE = 200  # images per side: enough for a stable AUC, a few seconds of CPU inference
PERMUTATIONS = 30


def class_balance(reference: Mapping[str, int], candidate: Mapping[str, int]) -> dict:
    """Class shares on both sides, their total variation distance, and the chi-square p-value."""
    classes = sorted(set(reference) | set(candidate))
    table = np.array([[reference.get(c, 0) for c in classes], [candidate.get(c, 0) for c in classes]], float)
    shares = table / table.sum(axis=1, keepdims=True)
    seen = table.sum(axis=0) > 0
    p = float(stats.chi2_contingency(table[:, seen])[1]) if seen.sum() > 1 else 1.0
    return {"total_variation": float(0.5 * np.abs(shares[0] - shares[1]).sum()), "chi2_p": p,
            "reference": dict(zip(classes, shares[0].round(4).tolist())),
            "candidate": dict(zip(classes, shares[1].round(4).tolist()))}


def intensity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """KS statistics and p-values of per-image mean and std (rows: images, columns: mean, std)."""
    out = {}
    for k, name in enumerate(("mean", "std")):
        test = stats.ks_2samp(reference[:, k], candidate[:, k])
        out[f"{name}_ks"], out[f"{name}_p"] = float(test.statistic), float(test.pvalue)
        out[f"{name}_reference"] = float(reference[:, k].mean())
        out[f"{name}_candidate"] = float(candidate[:, k].mean())
    return out


def domain_auc(reference: np.ndarray, candidate: np.ndarray, seed: int, permutations: int = PERMUTATIONS) -> dict:
    """Cross-validated ROC AUC of telling candidate features from reference features, with its permutation p."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, permutation_test_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([reference, candidate])
    y = np.r_[np.zeros(len(reference), int), np.ones(len(candidate), int)]
    folds = min(5, len(reference), len(candidate))
    if folds < 2:
        raise UserError("too few images to compare the two datasets' features (need 2 on each side)")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    auc, _, p = permutation_test_score(classifier, x, y, scoring="roc_auc",
                                       cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                       n_permutations=permutations, random_state=seed)
    return {"domain_auc": float(auc), "p_value": float(p), "permutations": permutations}


def training_counts(root: Path) -> dict[str, int]:
    """Images per class in train + val: the data a model was fitted and selected on."""
    counts = load_manifest(root).counts or {}
    out: dict[str, int] = {}
    for split in ("train", "val"):
        for cls, n in (counts.get(split) or {}).items():
            out[cls] = out.get(cls, 0) + int(n)
    return out


def pixel_hashes(root: Path) -> list[str]:
    """The training rows' pixel hashes, in row order (empty for datasets written before the column existed)."""
    try:
        return read_split(root, "train", ["pixel_sha256"]).column("pixel_sha256").to_pylist()
    except pa.ArrowInvalid:
        return []


def sample(root: Path, image_size: int, n: int, seed: int, exclude: frozenset[str] = frozenset()
           ) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded sample of up to ``n`` training images (uint8 Nx3xHxW at the model's size) and their
    per-image [mean, std] on [0, 1] as stored, leaving out the images whose pixel hash is in ``exclude``."""
    ds = ParquetImages(root, "train", image_size=image_size)
    hashes = pixel_hashes(root) if exclude else []
    pool = np.array([i for i in range(len(ds)) if not hashes or hashes[i] not in exclude], dtype=np.int64)
    if len(pool) == 0:
        raise UserError(f"{root}: no training images to measure drift on")
    rows = np.sort(pool[np.random.default_rng(seed).permutation(len(pool))[:n]])
    stored = [ds.stored(int(i)).float() / 255 for i in rows]
    moments = np.array([[float(img.mean()), float(img.std())] for img in stored])
    return torch.stack([ds.pixels(int(i)) for i in rows]), moments


def penultimate(model: torch.nn.Module, arch: str, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """What the classification head sees, per image: its input, spatially averaged when it is a map."""
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(head_module_name(arch)).register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].flatten(2).mean(2) if args[0].ndim == 4 else args[0]))
    model.eval()
    try:
        with torch.inference_mode():
            for x in ModelInputs(images.to(device), 64):
                model(x)
    finally:
        hook.remove()
    return torch.cat(seen).float().cpu().numpy()


def measure(champion_dir: Path, reference_root: Path, candidate_root: Path, seed: int,
            threshold: float = DEFAULT_THRESHOLD, n: int = SAMPLE, device: str = "auto") -> dict:
    """The drift report of ``candidate_root``'s training data against ``reference_root``'s (the
    champion's), seen through the champion at ``champion_dir``."""
    dev = resolve_device(device)
    model, meta = load_model_dir(champion_dir, dev)
    ref_images, ref_moments = sample(reference_root, meta.image_size, n, seed)
    # the candidate's data usually contains the champion's: drift is about the images that are new
    old = frozenset(pixel_hashes(reference_root))
    new = sum(h not in old for h in pixel_hashes(candidate_root)) if old else None
    if new == 0:
        log.info("drift: every training image of %s is in the champion's data; nothing new to compare",
                 candidate_root)
        return {"images": {"reference": len(ref_images), "candidate": 0, "new_in_candidate": 0},
                "class_balance": class_balance(training_counts(reference_root), training_counts(candidate_root)),
                "intensity": None, "features": None, "threshold": threshold, "drift": False}
    new_images, new_moments = sample(candidate_root, meta.image_size, n, seed, old)
    features = domain_auc(penultimate(model, meta.arch, ref_images, dev),
                          penultimate(model, meta.arch, new_images, dev), seed)
    report = {
        "images": {"reference": len(ref_images), "candidate": len(new_images), "new_in_candidate": new},
        "class_balance": class_balance(training_counts(reference_root), training_counts(candidate_root)),
        "intensity": intensity(ref_moments, new_moments),
        "features": features,
        "threshold": threshold,
        "drift": features["domain_auc"] >= threshold,
    }
    log.info("drift against the champion's training data: domain AUC %.3f (p=%.3g, threshold %.2f), class mix "
             "TV %.3f, intensity KS mean %.3f / std %.3f", features["domain_auc"], features["p_value"], threshold,
             report["class_balance"]["total_variation"], report["intensity"]["mean_ks"],
             report["intensity"]["std_ks"])
    return report

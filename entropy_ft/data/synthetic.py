"""Synthetic brain-MRI-like phantoms (``synthetic:N``) for the demo and the fast tests.

Each image is an axial slice cartoon: a skull ring around an elliptic head with smooth
tissue texture and dark ventricles. Three tumour classes differ in where the lesion sits,
its shape and its contrast, as in real T1 contrast-enhanced MRI:

* glioma: an irregular, ring-enhancing mass with a dark necrotic core, inside a hemisphere;
* meningioma: a round, homogeneous bright mass pressed against the skull;
* pituitary: a small bright lesion at the midline near the skull base;
* notumor: no lesion.

Everything is drawn from ``numpy.random.default_rng((seed, index))`` (anatomy, lesion) and
``(seed, index, 1)`` (scanner noise), so image i is the same whatever N is, and the same
index drawn with another class differs only where the lesion is.
"""

from __future__ import annotations

import hashlib

import numpy as np

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency texture: coarse noise upsampled bilinearly to ``size``."""
    coarse = rng.standard_normal((scale + 1, scale + 1))
    x = np.linspace(0, scale, size)
    i = np.clip(x.astype(int), 0, scale - 1)
    f = x - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def phantom(index: int, label: int, size: int, seed: int) -> np.ndarray:
    """One grayscale uint8 phantom of class ``CLASSES[label]``."""
    rng = np.random.default_rng((seed, index))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy = size / 2 + rng.normal(0, size * 0.02)
    cx = size / 2 + rng.normal(0, size * 0.02)
    ay = size * rng.uniform(0.40, 0.46)  # semi-axes of the head
    ax = ay * rng.uniform(0.78, 0.88)
    angle = rng.normal(0, 0.12)
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * ca + (yy - cy) * sa) / ax
    v = (-(xx - cx) * sa + (yy - cy) * ca) / ay
    r = np.sqrt(u**2 + v**2)

    img = np.zeros((size, size))
    skull = (r > 0.92) & (r <= 1.0)
    brain = r <= 0.92
    img[skull] = 0.85
    tissue = 0.45 + 0.06 * _smooth_noise(rng, size, 6) + 0.03 * _smooth_noise(rng, size, 20)
    gray_white = 0.08 * (r < 0.7)  # white matter a little brighter than cortex
    img[brain] = (tissue + gray_white)[brain]
    # ventricles: two dark lobes either side of the midline
    for side in (-1, 1):
        vu = (u - side * 0.12) / 0.09
        vv = (v + 0.05) / 0.25
        img[(vu**2 + vv**2 <= 1) & brain] = 0.12

    name = CLASSES[label]
    if name == "glioma":
        side = rng.choice([-1, 1])
        lu, lv = side * rng.uniform(0.3, 0.5), rng.uniform(-0.4, 0.3)
        rad = rng.uniform(0.16, 0.24)
        theta = np.arctan2(v - lv, u - lu)
        wobble = 1 + 0.25 * np.sin(3 * theta + rng.uniform(0, 6.28)) + 0.1 * np.sin(5 * theta)
        d = np.sqrt((u - lu) ** 2 + (v - lv) ** 2) / (rad * wobble)
        img[(d <= 1) & brain] = 0.95  # enhancing rim
        img[(d <= 0.65) & brain] = 0.2  # necrotic core
        img[(d > 1) & (d <= 1.5) & brain] += 0.1  # oedema
    elif name == "meningioma":
        t = rng.uniform(0, 2 * np.pi)
        rad = rng.uniform(0.13, 0.2)
        lu, lv = (0.92 - rad) * np.cos(t), (0.92 - rad) * np.sin(t)
        d = np.sqrt((u - lu) ** 2 + (v - lv) ** 2) / rad
        img[(d <= 1) & brain] = 0.9 + 0.03 * rng.standard_normal()
    elif name == "pituitary":
        rad = rng.uniform(0.07, 0.11)
        lu, lv = rng.normal(0, 0.02), rng.uniform(0.45, 0.6)
        d = np.sqrt((u - lu) ** 2 + ((v - lv) / 0.8) ** 2) / rad
        img[(d <= 1) & brain] = 1.0

    scan = np.random.default_rng((seed, index, 1))  # scanner effects: independent of the lesion draws
    img += scan.normal(0, 0.03, img.shape)  # scanner noise
    img *= scan.uniform(0.85, 1.1)  # global intensity variation between scans
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def labels(n: int, seed: int) -> np.ndarray:
    """Balanced labels for N images in a seeded order."""
    lab = np.arange(n) % len(CLASSES)
    np.random.default_rng((seed, 1_000_003)).shuffle(lab)
    return lab


def assign_splits(lab: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Stratified, seeded split per image: each class contributes the same fractions to test and val."""
    splits = ["train"] * len(lab)
    rng = np.random.default_rng((seed, 7))
    for cls in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(lab == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round((len(idx) - n_test) * val_fraction))
        for i in idx[:n_test]:
            splits[i] = "test"
        for i in idx[n_test : n_test + n_val]:
            splits[i] = "val"
    return splits


def generate(n: int, size: int, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15):
    """Yield (split, index, label, pixels, sha256) for N phantoms; splits are stratified by class."""
    lab = labels(n, seed)
    splits = assign_splits(lab, val_fraction, test_fraction, seed)
    for i in range(n):
        pixels = phantom(i, int(lab[i]), size, seed)
        yield splits[i], i, int(lab[i]), pixels, hashlib.sha256(pixels.tobytes()).hexdigest()

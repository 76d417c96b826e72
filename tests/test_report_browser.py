"""eval.html as a reader sees it: rendered by a real headless Chromium, not only read as text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from selection_factory import write_selection

from entropy_ft.cli import main
from entropy_ft.plots import HIGHLIGHT_COLOR, LINE_COLORS


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing under CI=true; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def test_eval_html_renders_its_sections_in_a_headless_browser(synthetic_dataset, tmp_path):
    browser = _chromium()
    selection = write_selection(tmp_path / "selection.json", "resnet18", "head")
    assert main(["finetune", str(synthetic_dataset), str(selection), "--out", str(tmp_path / "model"), "--epochs", "1",
                 "--batch-size", "32", "--precision", "fp32", "--device", "cpu", "--abstain-below", "0.5"]) == 0
    assert main(["evaluate", str(tmp_path / "model"), str(synthetic_dataset), "--out", str(tmp_path / "eval"),
                 "--noise", "0,0.2"]) == 0
    page = (tmp_path / "eval" / "eval.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    for heading in ("Noise robustness", "Per class at sigma 0", "Calibration", "Coverage against accuracy",
                    "Where the model looks (Grad-CAM)"):
        assert heading in dom, heading
    assert dom.count("<svg") == 4 and dom.count("<table>") == 2
    assert "answers 'uncertain' below 0.5" in dom and "sensitivity" in dom and "[" in dom  # CIs in brackets
    shown = json.loads((tmp_path / "eval" / "eval.json").read_text())["gradcam"]["images"]
    assert shown and dom.count("<image ") == len(shown)  # one embedded overlay per image eval.json names
    shot = tmp_path / "eval.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,4000", page], capture_output=True,
                   timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (4000, 1000, 3)
    for colour in LINE_COLORS[:2]:  # the charts' first two line colours: the SVG figures were drawn
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=2) < 30).sum() > 200, colour
    dark = (pixels.sum(axis=2) < 200).mean(axis=1)
    assert dark.mean() > 0.005  # dark text
    # the overlays were decoded and drawn: scans on black make bands far darker than any chart or table
    bands = dark[: len(dark) // 200 * 200].reshape(-1, 200).mean(axis=1)
    assert (bands > 0.05).sum() >= 2, bands.round(3)


def test_selection_html_renders_the_stability_section(synthetic_dataset, tmp_path):
    browser = _chromium()
    assert main(["profile", str(synthetic_dataset), "--weights", "none", "--images", "32", "--batch-size", "8",
                 "--bootstrap", "30", "--out", str(tmp_path / "profile")]) == 0
    assert main(["select", str(tmp_path / "profile"), "--strategy", "entropy", "--stability", "0.5",
                 "--out", str(tmp_path / "sel")]) == 0
    page = (tmp_path / "sel" / "selection.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "Stability over bootstrap resamples" in dom and dom.count("<svg") == 2
    assert "--stability 0.5" in dom and "share of resamples selecting the layer" in dom  # the threshold line's label
    assert "applied to each of 30 bootstrap resamples" in dom and "5th / 50th / 95th percentile" in dom
    assert dom.count("<th>resamples</th>") == 1  # the layer table's frequency column
    shot = tmp_path / "selection.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,2000", page], capture_output=True,
                   timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    rgb = np.array([int(HIGHLIGHT_COLOR[i:i + 2], 16) for i in (1, 3, 5)])
    rows = np.flatnonzero((np.abs(pixels - rgb).sum(axis=2) < 30).sum(axis=1) > 0)
    assert len(rows) > 100 and rows.max() - rows.min() > 600  # selected bars in both charts, one below the other

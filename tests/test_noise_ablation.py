"""The same-sigma reading of the noise ablation: train at one fixed sigma (--train-noise-mode fixed) and
score the model at that sigma."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from selection_factory import write_selection

from entropy_ft.cli import main
from entropy_ft.data.resumable import train_noise
from entropy_ft.steps.evaluate import evaluated_sigmas


def test_fixed_training_noise_gives_every_noised_image_the_same_sigma():
    sigmas, _ = train_noise(3, 1, 5, 1000, 0.3, 0.5, fixed=True)
    noisy = sigmas[sigmas > 0]
    assert 0.4 < len(noisy) / 1000 < 0.6 and torch.all(noisy == 0.3)
    assert torch.equal(sigmas, train_noise(3, 1, 5, 1000, 0.3, 0.5, fixed=True)[0])  # seeded like uniform
    assert torch.all(train_noise(3, 1, 5, 64, 0.3, 1.0, fixed=True)[0] == 0.3)  # P = 1: the whole batch at 0.3
    uniform, _ = train_noise(3, 1, 5, 1000, 0.3, 0.5)
    assert len(uniform[uniform > 0].unique()) > 400  # the default still draws sigma ~ U(0, 0.3)


def test_a_fixed_sigma_model_is_always_scored_at_its_own_sigma():
    assert evaluated_sigmas((0.1, 0.4), {"train_noise": 0.25, "train_noise_mode": "fixed"}) == (0.0, 0.1, 0.25, 0.4)
    assert evaluated_sigmas((0.2,), {"train_noise": 0.2, "train_noise_mode": "fixed"}) == (0.0, 0.2)
    assert evaluated_sigmas((0.1,), {"train_noise": 0.25, "train_noise_mode": "uniform"}) == (0.0, 0.1)
    assert evaluated_sigmas((0.1,), {"train_noise": 0.0, "train_noise_mode": "fixed"}) == (0.0, 0.1)
    assert evaluated_sigmas((0.3, 0.1), {}) == (0.0, 0.1, 0.3)  # a model.json from before the mode existed


def test_finetune_at_a_fixed_sigma_and_evaluate_there(synthetic_dataset, tmp_path):
    selection = write_selection(tmp_path / "selection.json", "squeezenet1_1", "head")
    common = ["--epochs", "1", "--batch-size", "32", "--precision", "fp32", "--device", "cpu", "--train-noise", "0.25",
              "--train-noise-p", "1"]
    for mode in ("fixed", "uniform"):
        assert main(["finetune", str(synthetic_dataset), str(selection), "--out", str(tmp_path / mode), *common,
                     "--train-noise-mode", mode]) == 0
    config = json.loads((tmp_path / "fixed" / "model.json").read_text())["training"]["config"]
    assert (config["train_noise"], config["train_noise_p"], config["train_noise_mode"]) == (0.25, 1.0, "fixed")
    fixed, uniform = (load_file(str(tmp_path / m / "weights.safetensors")) for m in ("fixed", "uniform"))
    assert any(not torch.equal(fixed[k], uniform[k]) for k in fixed)  # the mode reached the training loop
    assert main(["evaluate", str(tmp_path / "fixed"), str(synthetic_dataset), "--out", str(tmp_path / "e"),
                 "--noise", "0.1", "--gradcam", "0"]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert [row["sigma"] for row in report["noise"]] == [0.0, 0.1, 0.25]


def _exit_code(argv: list[str]) -> int:
    """main's exit code, also where argparse itself refuses a value (an unknown choice)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv, message", [
    (["--train-noise-mode", "gaussian"], "--train-noise-mode: invalid choice: 'gaussian'"),
    (["--train-noise", "-1"], "--train-noise -1: expected 0 to 1"),
    (["--train-noise-p", "1.5"], "--train-noise-p 1.5: expected 0 to 1"),
])
def test_bad_training_noise_exits_2_before_training(argv, message, synthetic_dataset, tmp_path, capsys):
    selection = write_selection(tmp_path / "selection.json", "squeezenet1_1", "head")
    assert _exit_code(["finetune", str(synthetic_dataset), str(selection), "--out", str(tmp_path / "m"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert _exit_code(["run", "--pipeline", "ablation", "--root", str(tmp_path / "out"), *argv]) == 2  # pipelines too
    err = capsys.readouterr().err
    assert (message if "invalid choice" not in message else "--train-noise-mode gaussian: expected one of") in err
    assert not (tmp_path / "out").exists()

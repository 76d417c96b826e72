"""The ablation's comparison says how entropy fared against random layers of the same size."""

from __future__ import annotations

from entropy_ft.steps.compare import entropy_against_random


def row(strategy: str, params: int, accuracy: float, macro_f1: float) -> dict:
    return {"strategy": strategy, "trainable_params": params, "accuracy": accuracy, "macro_f1": macro_f1}


def test_entropy_behind_random_is_said_with_both_parameter_counts():
    text = entropy_against_random([row("entropy", 4_958_916, 0.961, 0.958), row("random", 4_927_172, 0.976, 0.975),
                                   row("full", 11_178_564, 0.983, 0.982)])
    assert "entropy trains 4,958,916 parameters and random 4,927,172" in text
    assert "entropy is behind random by 1.5 accuracy points (macro-F1 -1.7)" in text


def test_ahead_level_and_absent():
    entropy = row("entropy", 10, 0.9, 0.9)
    assert "ahead of random by 2.0" in entropy_against_random([entropy, row("random", 10, 0.88, 0.9)])
    assert "level with random by 0.0" in entropy_against_random([entropy, row("random", 10, 0.9, 0.9)])
    assert entropy_against_random([row("entropy", 10, 0.9, 0.9), row("full", 20, 0.95, 0.95)]) is None

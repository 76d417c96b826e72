"""Metrics against hand-counted cases; noise evaluation is seeded and sigma 0 is the plain evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropy_ft.data.loader import LoaderConfig, make_loader
from entropy_ft.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    macro_f1,
    per_class_recall,
)
from entropy_ft.evaluation.noise import noise_generator, noise_robustness, predict
from entropy_ft.model import factory as models

# true 0 0 0 1 1 2 / predicted 0 0 1 1 2 2
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    assert confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_metrics_on_a_hand_counted_case():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert accuracy(cm) == pytest.approx(4 / 6)
    assert per_class_recall(cm).tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert balanced_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1 = 2TP / (2TP + FP + FN): class 0: 4/5, class 1: 2/4, class 2: 2/3
    assert macro_f1(cm) == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)


def test_classes_absent_from_labels():
    # class 1 is predicted once but never true; class 2 never occurs at all
    cm = confusion_matrix(np.array([0, 0]), np.array([0, 1]), 3)
    recall = per_class_recall(cm)
    assert recall[0] == 0.5 and np.isnan(recall[1]) and np.isnan(recall[2])
    assert balanced_accuracy(cm) == 0.5  # mean over classes that have true images
    assert macro_f1(cm) == pytest.approx((2 / 3 + 0) / 2)  # class 2 (no labels, no predictions) left out
    block = classification_metrics(np.array([0, 0]), np.array([0, 1]), ["a", "b", "c"])
    assert block["per_class_recall"] == {"a": 0.5, "b": None, "c": None}
    assert block["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_metrics_agree_with_scikit_learn_on_random_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    cm = confusion_matrix(y_true, y_pred, 4)
    assert accuracy(cm) == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert macro_f1(cm) == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))
    assert balanced_accuracy(cm) == pytest.approx(metrics.balanced_accuracy_score(y_true, y_pred))
    assert per_class_recall(cm) == pytest.approx(metrics.recall_score(y_true, y_pred, average=None))


@pytest.fixture(scope="module")
def model_and_loader(synthetic_dataset):
    torch.manual_seed(0)
    model, _ = models.build_model("squeezenet1_1", 4, "none")
    loader = make_loader(synthetic_dataset, "test", LoaderConfig(batch_size=8), train=False)
    return model.eval(), loader


SIGMAS = (0.0, 0.1, 0.4)
CPU = torch.device("cpu")


def test_noise_evaluation_is_seeded(model_and_loader):
    model, loader = model_and_loader
    classes = ["a", "b", "c", "d"]
    first = noise_robustness(model, loader, classes, SIGMAS, seed=5, device=CPU)
    again = noise_robustness(model, loader, classes, SIGMAS, seed=5, device=CPU)
    assert first == again
    # a sigma's noise does not depend on which other sigmas are evaluated
    alone = noise_robustness(model, loader, classes, (0.4,), seed=5, device=CPU)
    assert alone[0] == first[2]
    assert [row["sigma"] for row in first] == list(SIGMAS)


def test_sigma_zero_is_the_plain_evaluation_and_noise_changes_the_inputs(model_and_loader):
    model, loader = model_and_loader
    y, logits = predict(model, loader, CPU)
    row = noise_robustness(model, loader, ["a", "b", "c", "d"], (0.0,), seed=5, device=CPU)[0]
    assert row["accuracy"] == accuracy(confusion_matrix(y, logits.argmax(axis=1), 4))
    assert row["confusion_matrix"] == confusion_matrix(y, logits.argmax(axis=1), 4).tolist()
    _, noisy = predict(model, loader, CPU, noise_sigma=0.4, generator=noise_generator(5, 0.4))
    _, noisy_other_seed = predict(model, loader, CPU, noise_sigma=0.4, generator=noise_generator(6, 0.4))
    assert not np.array_equal(noisy, logits)
    assert not np.array_equal(noisy, noisy_other_seed)


def test_per_class_rates_on_a_hand_counted_case():
    from entropy_ft.evaluation.uncertainty import per_class_rates

    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)  # rows true 0 0 0 1 1 2, columns predicted 0 0 1 1 2 2
    rates = per_class_rates(cm, ["a", "b", "c"])
    assert rates["a"]["sensitivity"]["value"] == pytest.approx(2 / 3) and rates["a"]["sensitivity"]["n"] == 3
    assert rates["a"]["specificity"]["value"] == 1.0 and rates["a"]["ppv"]["value"] == 1.0
    assert rates["b"]["ppv"]["value"] == pytest.approx(1 / 2) and rates["b"]["npv"]["value"] == pytest.approx(3 / 4)
    assert rates["c"]["sensitivity"]["value"] == 1.0 and rates["c"]["specificity"]["value"] == pytest.approx(4 / 5)
    low, high = rates["a"]["sensitivity"]["ci"]
    assert 0 < low < 2 / 3 < high < 1  # Wilson: inside [0, 1] and around the estimate
    empty = per_class_rates(np.array([[2, 0], [0, 0]]), ["x", "y"])["y"]["sensitivity"]
    assert empty == {"value": None, "ci": None, "n": 0}  # no true images of y: no rate to state


def test_score_cis_cover_the_estimate_and_narrow_with_more_images():
    from entropy_ft.evaluation.uncertainty import score_cis

    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        y = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, 4, n))
        cis = score_cis(y, pred, 4, seed=0)
        estimate = accuracy(confusion_matrix(y, pred, 4))
        assert cis["accuracy"][0] < estimate < cis["accuracy"][1]
        assert set(cis) == {"accuracy", "macro_f1", "balanced_accuracy"}
        widths.append(cis["accuracy"][1] - cis["accuracy"][0])
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) as wide with 16 times the images
    assert score_cis(y, pred, 4, seed=0) == cis  # seeded

"""Confusion matrix and the scores it gives: against scikit-learn, and small cases worked by hand."""

import numpy as np
import pytest

from gigaseg.errors import InputError
from gigaseg.models.metrics import classification_scores, confusion_matrix

CLASSES = ["water", "forest", "urban", "snow"]


def test_a_small_case_worked_by_hand():
    reference = np.array([[0, 0, 0, 1], [1, 1, 2, 2]])
    predicted = np.array([[0, 0, 1, 1], [1, 2, 2, 0]])
    matrix = confusion_matrix(reference, predicted, 4)
    np.testing.assert_array_equal(matrix, [[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    scores = classification_scores(matrix, CLASSES)
    water = scores["classes"]["water"]
    assert water["precision"] == pytest.approx(2 / 3) and water["recall"] == pytest.approx(2 / 3)
    assert water["f1"] == pytest.approx(2 / 3) and water["iou"] == pytest.approx(2 / 4)
    urban = scores["classes"]["urban"]  # tp 1, fp 1, fn 1
    assert (urban["precision"], urban["recall"], urban["iou"]) == pytest.approx((0.5, 0.5, 1 / 3))
    assert scores["classes"]["snow"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "iou": None,
        "reference_pixels": 0,
        "predicted_pixels": 0,
    }
    assert scores["overall_accuracy"] == pytest.approx(5 / 8)
    # chance agreement: (3*3 + 3*3 + 2*2) / 64
    pe = 22 / 64
    assert scores["kappa"] == pytest.approx((5 / 8 - pe) / (1 - pe))
    assert scores["macro"]["iou"] == pytest.approx((2 / 4 + 2 / 4 + 1 / 3) / 3)  # snow does not count
    assert scores["pixels"] == 8


def test_valid_pixels_only_and_blocks_add_up():
    rng = np.random.default_rng(3)
    reference, predicted = rng.integers(0, 4, (40, 50)), rng.integers(0, 4, (40, 50))
    valid = rng.random((40, 50)) > 0.3
    whole = confusion_matrix(reference, predicted, 4, valid=valid)
    blocks = sum(
        confusion_matrix(reference[r : r + 7], predicted[r : r + 7], 4, valid=valid[r : r + 7]) for r in range(0, 40, 7)
    )
    np.testing.assert_array_equal(whole, blocks)
    assert whole.sum() == valid.sum() and whole.dtype == np.int64


def test_a_class_on_one_side_only_scores_zero_and_one_class_everywhere_has_no_kappa():
    scores = classification_scores(np.array([[5, 0], [0, 0]]), ["a", "b"])
    assert scores["kappa"] is None and scores["overall_accuracy"] == 1.0
    assert scores["classes"]["b"]["f1"] is None
    missed = classification_scores(np.array([[5, 0], [3, 0]]), ["a", "b"])["classes"]["b"]
    assert (missed["precision"], missed["recall"], missed["f1"], missed["iou"]) == (0.0, 0.0, 0.0, 0.0)
    empty = classification_scores(np.zeros((2, 2), np.int64), ["a", "b"])
    assert empty["overall_accuracy"] is None and empty["kappa"] is None and empty["macro"]["f1"] is None


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(InputError, match="reference label 4 is not a class index 0..3"):
        confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)
    with pytest.raises(InputError, match="predicted label -1"):
        confusion_matrix(np.array([0, 1]), np.array([0, -1]), 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    reference = rng.choice(4, 5000, p=[0.5, 0.3, 0.2, 0.0])  # snow never in the reference
    predicted = np.where(rng.random(5000) < 0.7, reference, rng.integers(0, 3 + seed % 2, 5000))
    matrix = confusion_matrix(reference, predicted, 4)
    np.testing.assert_array_equal(matrix, metrics.confusion_matrix(reference, predicted, labels=range(4)))
    scores = classification_scores(matrix, CLASSES)
    present = sorted(set(reference) | set(predicted))
    p, r, f, support = metrics.precision_recall_fscore_support(reference, predicted, labels=present, zero_division=0)
    iou = metrics.jaccard_score(reference, predicted, labels=present, average=None, zero_division=0)
    for i, k in enumerate(present):
        got = scores["classes"][CLASSES[k]]
        assert (got["precision"], got["recall"], got["f1"], got["iou"]) == pytest.approx((p[i], r[i], f[i], iou[i]))
        assert got["reference_pixels"] == support[i]
    assert scores["kappa"] == pytest.approx(metrics.cohen_kappa_score(reference, predicted))
    assert scores["overall_accuracy"] == pytest.approx(metrics.accuracy_score(reference, predicted))
    assert scores["macro"]["f1"] == pytest.approx(f.mean())
    if 3 not in present:
        assert scores["classes"]["snow"]["f1"] is None

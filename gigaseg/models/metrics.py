"""Classification scores of a segmentation against reference labels.

:func:`confusion_matrix` and :func:`classification_scores` serve training's
validation and ``gigaseg evaluate`` (a mask against reference labels, streamed
block by block: sum the matrices). They live with the models so that training
uses them without reaching into a later room.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gigaseg.errors import InputError


def confusion_matrix(
    reference: np.ndarray, predicted: np.ndarray, classes: int, *, valid: np.ndarray | None = None
) -> np.ndarray:
    """``matrix[true, predicted]``: int64 pixel counts over the pixels where ``valid`` (default all).

    Both maps hold class indices ``0..classes - 1`` where valid; matrices of
    blocks add up to the matrix of the whole.
    """
    if valid is not None:
        reference, predicted = reference[valid], predicted[valid]
    reference, predicted = reference.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    for name, values in (("reference", reference), ("predicted", predicted)):
        if values.size and (values.min() < 0 or values.max() >= classes):
            bad = values[(values < 0) | (values >= classes)][0]
            raise InputError(f"{name} label {bad} is not a class index 0..{classes - 1}")
    index = reference * classes + predicted
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def classification_scores(matrix: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 (Dice) and IoU, their macro means, overall accuracy and Cohen's kappa.

    ``matrix[true, predicted]`` as :func:`confusion_matrix` makes it. A class absent
    from both the reference and the prediction has no scores (None) and does not
    count in the macro means; for one absent from one side only, the ratio that
    divides by zero counts as 0 (scikit-learn's ``zero_division=0``). Kappa is
    None where chance agreement is total (one class everywhere on both sides),
    every figure None when no pixel was compared.
    """
    matrix = np.asarray(matrix, np.int64)
    tp = np.diag(matrix).astype(np.float64)
    truth, predicted = matrix.sum(1).astype(np.float64), matrix.sum(0).astype(np.float64)
    total = float(matrix.sum())
    present = (truth + predicted) > 0
    per = {
        "precision": tp / np.maximum(predicted, 1),
        "recall": tp / np.maximum(truth, 1),
        "f1": 2 * tp / np.maximum(truth + predicted, 1),
        "iou": tp / np.maximum(truth + predicted - tp, 1),
    }
    per_class = {
        name: {
            **{key: float(values[i]) if present[i] else None for key, values in per.items()},
            "reference_pixels": int(truth[i]),
            "predicted_pixels": int(predicted[i]),
        }
        for i, name in enumerate(classes)
    }
    expected = float((truth * predicted).sum()) / total**2 if total else None
    accuracy = float(tp.sum()) / total if total else None
    kappa = None if expected is None or accuracy is None or expected == 1 else (accuracy - expected) / (1 - expected)
    return {
        "classes": per_class,
        "macro": {key: float(values[present].mean()) if present.any() else None for key, values in per.items()},
        "overall_accuracy": accuracy,
        "kappa": kappa,
        "pixels": int(total),
    }

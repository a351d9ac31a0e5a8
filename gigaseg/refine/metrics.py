"""Segmentation quality against a known truth: mean IoU, boundary F-score.

The confusion matrix and its per-class scores are :mod:`gigaseg.models.metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def mean_iou(pred: np.ndarray, truth: np.ndarray, *, classes: int, valid: np.ndarray | None = None) -> float:
    """Intersection over union averaged over the classes present in either map."""
    keep = np.ones(truth.shape, bool) if valid is None else valid
    scores = []
    for k in range(classes):
        p, t = (pred == k) & keep, (truth == k) & keep
        union = int((p | t).sum())
        if union:
            scores.append((p & t).sum() / union)
    return float(np.mean(scores)) if scores else 1.0


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose label differs from a face neighbour's."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        diff = np.diff(labels, axis=axis) != 0
        lead = [slice(None)] * labels.ndim
        lead[axis] = slice(0, -1)
        edge[tuple(lead)] |= diff
        lead[axis] = slice(1, None)
        edge[tuple(lead)] |= diff
    return edge


def boundary_f1(pred: np.ndarray, truth: np.ndarray, *, tolerance: int = 1) -> float:
    """F-score of boundary pixels matched within ``tolerance`` pixels (Csurka et al., BMVC 2013)."""
    bp, bt = boundaries(pred), boundaries(truth)
    if not bp.any() and not bt.any():
        return 1.0
    near_t = ndimage.distance_transform_edt(~bt) <= tolerance
    near_p = ndimage.distance_transform_edt(~bp) <= tolerance
    precision = (bp & near_t).sum() / max(1, bp.sum())
    recall = (bt & near_p).sum() / max(1, bt.sum())
    return float(2 * precision * recall / max(1e-12, precision + recall))

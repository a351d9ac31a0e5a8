"""``gigaseg evaluate``: a finished mask against reference labels, streamed chunk row by chunk row.

The reference is a raster of class labels (band 1, with its nodata value) or
points/polygons with a class attribute, read on the mask's grid by
:mod:`gigaseg.io.reference`.

Only labelled pixels count: the reference holds a class there and the mask is
not nodata. Reference pixels the mask left nodata are counted apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gigaseg.errors import InputError, OutputError
from gigaseg.io.reference import Reference, open_reference
from gigaseg.io.store import MaskStore, open_store
from gigaseg.models.metrics import classification_scores, confusion_matrix
from gigaseg.tiler import Box


@dataclass
class Evaluation:
    """The confusion matrix of a mask against its reference, and the figures it gives."""

    store: str
    reference: str
    classes: list[str]
    matrix: np.ndarray  # matrix[reference, mask]
    mask_nodata: int = 0  # pixels labelled in the reference where the mask is nodata, not in the matrix
    scores: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = classification_scores(self.matrix, self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "reference": self.reference,
            "classes": self.classes,
            "confusion_matrix": self.matrix.tolist(),
            "confusion_matrix_axes": ["reference", "mask"],
            **self.scores,
            "reference_labelled_mask_nodata": self.mask_nodata,
        }

    def table(self) -> str:
        """Per-class scores, overall figures, the confusion matrix and the counts, as terminal lines."""
        lines = [f"{self.store} against {self.reference}", "", *score_lines(self.scores, self.matrix, self.classes)]
        lines.append(
            f"{self.scores['pixels']:,} labelled pixels compared; {self.mask_nodata:,} labelled in the reference "
            "but nodata in the mask (not compared)"
        )
        return "\n".join(lines)


def score_lines(
    scores: dict[str, Any], matrix: np.ndarray, classes: list[str], *, predicted: str = "mask"
) -> list[str]:
    """The table ``gigaseg evaluate`` prints (``gigaseg train`` too, for its best epoch): per-class
    precision, recall, F1 and IoU, their macro means, accuracy and kappa, then the confusion matrix.

    ``scores`` as :func:`~gigaseg.models.metrics.classification_scores` makes them from
    ``matrix[reference, predicted]``; ``predicted`` names the matrix's columns.
    """
    width = max(len("macro mean"), *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall      F1     IoU  reference px"]
    for name, row in scores["classes"].items():
        lines.append(f"{name:<{width}}  {_row(row)}  {row['reference_pixels']:>12,}")
    lines.append(f"{'macro mean':<{width}}  {_row(scores['macro'])}")
    lines += ["", f"overall accuracy {_fmt(scores['overall_accuracy'])}, kappa {_fmt(scores['kappa'])}"]
    lines += ["", f"confusion matrix (rows: reference, columns: {predicted}):", *_matrix_lines(matrix, classes, width)]
    return [*lines, ""]


def _matrix_lines(matrix: np.ndarray, classes: list[str], width: int) -> list[str]:
    cell = max(8, len(f"{int(matrix.max(initial=0)):,}") + 1, *(len(c) + 1 for c in classes))
    lines = [" " * width + "".join(f"{c:>{cell}}" for c in classes)]
    for name, counts in zip(classes, matrix, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{int(n):>{cell},}" for n in counts))
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _row(scores: dict[str, Any]) -> str:
    return "  ".join(f"{_fmt(scores[k]):>{w}}" for k, w in (("precision", 9), ("recall", 6), ("f1", 6), ("iou", 6)))


def evaluate_store(
    store_path: str | Path,
    reference_path: str | Path,
    *,
    label_offset: int = 0,
    ignore_value: int | str | None = None,
    attribute: str | None = None,
) -> Evaluation:
    """Compare a finished mask store with reference labels, one chunk row at a time (bounded memory)."""
    store = open_store(store_path, require_complete=True)
    if store.mask.ndim != 2:
        raise InputError(f"{store_path} holds a {store.mask.ndim}-D mask; evaluate compares 2-D masks")
    reference = open_reference(
        reference_path, store, label_offset=label_offset, ignore_value=ignore_value, attribute=attribute
    )
    try:
        matrix, mask_nodata = _count(store, reference)
    finally:
        reference.close()
    if not matrix.any():
        where = f" ({mask_nodata:,} labelled pixels fall where the mask is nodata)" if mask_nodata else ""
        raise InputError(
            f"no pixel of {store_path} has both a class and a label in {reference_path}{where}: "
            "do they cover the same place?"
        )
    return Evaluation(str(store_path), reference.description, store.classes, matrix, mask_nodata)


def _count(store: MaskStore, reference: Reference) -> tuple[np.ndarray, int]:
    """The confusion matrix over labelled pixels, and the labelled pixels the mask left nodata."""
    k = len(store.classes)
    matrix, mask_nodata = np.zeros((k, k), np.int64), 0
    height, width = store.mask.shape
    rows = store.mask.chunks[0]
    for start in range(0, height, rows):
        box = Box((start, 0), (min(start + rows, height), width))
        predicted = store.read(box)
        labels, labelled = reference.read(box)
        predicted_ok = predicted != store.nodata
        matrix += confusion_matrix(labels, predicted, k, valid=labelled & predicted_ok)
        mask_nodata += int((labelled & ~predicted_ok).sum())
    return matrix, mask_nodata


def plot_confusion(evaluation: Evaluation, path: str | Path) -> None:
    """Draw the confusion matrix as a PNG: colours by row share (recall), counts written in the cells."""
    try:
        from matplotlib.figure import Figure  # Figure draws with Agg, without pyplot's global state
    except ImportError:
        raise InputError("drawing the confusion matrix needs matplotlib: pip install 'gigaseg[plot]'") from None
    path = Path(path)
    if not os.access(path.absolute().parent, os.W_OK):
        raise OutputError(f"cannot write {path}: {path.absolute().parent} is not a writable directory")
    matrix, classes = evaluation.matrix, evaluation.classes
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    k = len(classes)
    side = 2.5 + 0.6 * k
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the reference class")
    axes.set(xticks=range(k), yticks=range(k), xlabel="mask", ylabel="reference")
    axes.set_xticklabels(classes, rotation=45, ha="right")
    axes.set_yticklabels(classes)
    if k <= 20:
        for (i, j), n in np.ndenumerate(matrix):
            axes.text(
                j, i, f"{n:,}", ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.5 else "black"
            )
    kappa = evaluation.scores["kappa"]
    axes.set_title(f"accuracy {_fmt(evaluation.scores['overall_accuracy'])}, kappa {_fmt(kappa)}")
    figure.savefig(path, dpi=100)

"""``gigaseg train``: open (image, labels) files as sources, then train.

Files are opened by suffix with :func:`gigaseg.io.sources.open_source`:
``.npy`` arrays are memory-mapped (the labels' number of axes gives the
spatial dims; the image may have one more axis, channels first),
``.nii``/``.nii.gz`` go to the NIfTI source, anything else to GDAL through
:class:`~gigaseg.io.geotiff.GeoTiffSource`. Every source is read tile by tile.
Labels may also be vectors (GeoPackage, GeoJSON, Shapefile, ...: points or
polygons with a class attribute), rasterised onto each tile's grid of the
image (:class:`~gigaseg.io.vectors.VectorLabels`, reprojected to the image's
CRS when they differ).

:func:`validation_table` gives the best epoch's validation in the table
``gigaseg evaluate`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigaseg.errors import InputError
from gigaseg.io.georef import Georef
from gigaseg.io.sources import Source, open_source
from gigaseg.jobs.evaluate import score_lines
from gigaseg.models.card import ModelCard
from gigaseg.models.metrics import classification_scores
from gigaseg.models.training import Log, Pair, TrainConfig, TrainResult, train
from gigaseg.tiler import Box


class VectorLabelSource:
    """Vector labels read like a labels raster on an image's grid.

    Values are the raw label values (class index + ``offset``), as a raster of the same
    labels would hold, so training's ``label_offset`` applies to both alike.
    """

    unit = "m"

    def __init__(self, vectors: Any, image: Source, *, offset: int = 0) -> None:
        georef = image.georef
        if not isinstance(georef, Georef) or len(image.shape) != 2:
            raise InputError(f"vector labels {vectors.path} need a georeferenced 2-D image, not {image.path}")
        self.vectors, self.georef, self.offset = vectors, georef, offset
        self.shape, self.path = tuple(image.shape), vectors.path
        self.spacing = tuple(image.spacing)

    @property
    def channels(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        return {"vectors": str(self.vectors.path), "offset": self.offset}

    def close(self) -> None:
        """Nothing to release: the vectors are in memory."""

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        labels = self.vectors.rasterize(box, self.georef)
        valid = labels != self.vectors.nodata
        return (labels.astype(np.float32) + np.float32(self.offset))[None], valid


def open_labels(
    path: str | Path, image_path: str | Path, *, bands: list[int] | None, config: TrainConfig | None
) -> Pair:
    """The pair of ``image_path`` and its labels ``path``: a raster, or vectors burnt onto its grid."""
    from gigaseg.io.vectors import VectorLabels, is_vector_path

    if not is_vector_path(path):
        labels_source = open_source(path)
        return Pair(open_source(image_path, bands=bands, spatial_dims=len(labels_source.shape)), labels_source)
    image = open_source(image_path, bands=bands, spatial_dims=2)
    config = config or TrainConfig(classes=["class0"])
    ignore = [] if config.ignore_index is None else [config.ignore_index]
    vectors = VectorLabels(
        path, attribute=config.label_attribute, classes=config.classes, offset=config.label_offset, ignore=ignore
    )
    return Pair(image, VectorLabelSource(vectors, image, offset=config.label_offset))


def open_pairs(
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    *,
    bands: list[int] | None = None,
    config: TrainConfig | None = None,
) -> list[Pair]:
    """``images[i]`` paired with ``labels[i]`` (a raster, or vector labels when ``config`` is given)."""
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label files; give one label file per image")
    return [open_labels(label, image, bands=bands, config=config) for image, label in zip(images, labels, strict=True)]


def run_train(
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    out: Path,
    config: TrainConfig,
    *,
    val_images: Sequence[str | Path] = (),
    val_labels: Sequence[str | Path] = (),
    bands: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Log | None = None,
) -> TrainResult:
    """Open the files and train; see :func:`gigaseg.models.training.train`."""
    pairs = open_pairs(list(images), list(labels), bands=bands, config=config)
    val_pairs = open_pairs(list(val_images), list(val_labels), bands=bands, config=config) or None
    return train(
        pairs,
        out,
        config,
        val_pairs=val_pairs,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        log=log,
    )


def validation_table(card: ModelCard) -> str | None:
    """The best epoch's validation scores in ``gigaseg evaluate``'s table; None for a card without its matrix."""
    matrix = card.metrics.get("val_confusion_matrix")
    if matrix is None:
        return None
    matrix = np.asarray(matrix, np.int64)
    scores = classification_scores(matrix, card.classes)
    head = f"validation of the best epoch ({card.metrics['epoch']}), on {scores['pixels']:,} labelled pixels"
    return "\n".join([head, "", *score_lines(scores, matrix, card.classes, predicted="model")])

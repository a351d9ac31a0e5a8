"""``gigaseg train``: open (image, labels) files as sources, then train.

Files are opened by suffix: ``.npy`` arrays are memory-mapped (the labels'
number of axes gives the spatial dims; the image may have one more axis,
channels first), ``.nii``/``.nii.gz`` go to the NIfTI source, anything else to
GDAL through :class:`GeoTiffSource`. Every source is read tile by tile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gigaseg.errors import InputError, SourceError
from gigaseg.io.array import ArraySource
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.models.training import Log, Pair, Source, TrainConfig, TrainResult, train

Opener = Callable[[Path, list[int] | None, int | None], Source]


def _open_npy(path: Path, bands: list[int] | None, spatial_dims: int | None) -> Source:
    if spatial_dims is None:  # labels: no channel axis
        spatial_dims = np.load(path, mmap_mode="r").ndim
    source = ArraySource.from_npy(path, spatial_dims=spatial_dims)
    if bands:
        bad = [b for b in bands if not 1 <= b <= source.channels]
        if bad:
            raise InputError(f"bands {bad} do not exist in {path}, which has bands 1..{source.channels}")
        source = ArraySource(source.array[[b - 1 for b in bands]], spatial_dims=spatial_dims, path=str(path))
    return source


def _open_nifti(path: Path, bands: list[int] | None, spatial_dims: int | None) -> Source:
    try:
        from gigaseg.io.nifti import NiftiSource  # the NIfTI source, where it is installed
    except ImportError:
        raise SourceError(
            f"cannot train on {path}: this gigaseg has no NIfTI source yet; save the volume as .npy"
        ) from None
    return NiftiSource(path)


def _open_raster(path: Path, bands: list[int] | None, spatial_dims: int | None) -> Source:
    return GeoTiffSource(path, bands=bands)


OPENERS: dict[str, Opener] = {".npy": _open_npy, ".nii": _open_nifti, ".nii.gz": _open_nifti}


def open_source(path: str | Path, *, bands: list[int] | None = None, spatial_dims: int | None = None) -> Source:
    """A source for ``path`` chosen by its suffix (GDAL for anything unknown)."""
    path = Path(path)
    name = path.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
    return OPENERS.get(suffix, _open_raster)(path, bands, spatial_dims)


def open_pairs(images: Sequence[Path], labels: Sequence[Path], *, bands: list[int] | None = None) -> list[Pair]:
    """``images[i]`` paired with ``labels[i]``."""
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label files; give one --labels per --image")
    pairs = []
    for image, label in zip(images, labels, strict=True):
        labels_source = open_source(label)
        pairs.append(Pair(open_source(image, bands=bands, spatial_dims=len(labels_source.shape)), labels_source))
    return pairs


def run_train(
    images: Sequence[Path],
    labels: Sequence[Path],
    out: Path,
    config: TrainConfig,
    *,
    val_images: Sequence[Path] = (),
    val_labels: Sequence[Path] = (),
    bands: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Log | None = None,
) -> TrainResult:
    """Open the files and train; see :func:`gigaseg.models.training.train`."""
    pairs = open_pairs(list(images), list(labels), bands=bands)
    val_pairs = open_pairs(list(val_images), list(val_labels), bands=bands) or None
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

"""The source contract: what the pipeline needs from an input, whatever its format.

A source is a scene of ``shape`` (spatial axes only: ``(y, x)`` or
``(z, y, x)``) with ``channels`` values per pixel, read box by box. It must be
picklable (Dask ships it to workers) and reopen its file handles lazily in
each process and thread. ``georef`` is whatever the store writes so the mask
lands where the input is: a :class:`~gigaseg.io.georef.Georef` for rasters, a
:class:`~gigaseg.io.niftiref.NiftiRef` for NIfTI volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gigaseg.errors import InputError
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.nifti import NiftiSource, is_nifti
from gigaseg.io.niftiref import NiftiRef
from gigaseg.tiler import Box
from gigaseg.tiler.axes import AxisView


@runtime_checkable
class Source(Protocol):
    """A scene read box by box: float32 ``(channels, *box.shape)`` and validity ``box.shape``."""

    path: str
    shape: tuple[int, ...]
    channels: int
    spacing: tuple[float, ...]  # pixel (voxel) size per axis, in ``unit``
    unit: str  # "m" (CRS units) or "mm"
    georef: Georef | NiftiRef

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """The reading options, for provenance."""
        ...


@runtime_checkable
class ReadsNative(Protocol):
    """A source that can hand small integer pixels over in their own type.

    ``read_native(box)`` is :meth:`Source.read` without the float32 copy for 8-
    and 16-bit integers (a uint8 strip is a quarter of the size); the caller
    converts. The pipeline keeps its tile-row strips this way.
    """

    def read_native(self, box: Box) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Oriented(Protocol):
    """A source whose axes a model may expect in another order or orientation (NIfTI)."""

    def axis_view(self, *, canonical: bool = False) -> AxisView: ...


def open_source(
    path: str | Path,
    *,
    bands: list[int] | None = None,
    nodata_rule: str = "all-bands",
    volume: int | str | None = None,
    cache_dir: str | Path | None = None,
    cache_max: int | None = None,
    header_only: bool = False,
) -> Source:
    """The source for ``path``: NIfTI for ``.nii``/``.nii.gz``, else any GDAL raster.

    ``nodata_rule`` says when a raster's pixel is nodata
    (:data:`~gigaseg.io.geotiff.NODATA_RULES`); a NIfTI volume has no nodata
    value, only non-finite voxels. ``header_only`` opens it for planning: no
    ``.nii.gz`` is decompressed into the cache.
    """
    if is_nifti(path):
        if bands:
            raise InputError("--bands selects raster bands; choose NIfTI volumes with --volume")
        return NiftiSource(path, volume=volume, cache_dir=cache_dir, cache_max=cache_max, header_only=header_only)
    if volume is not None:
        raise InputError(f"--volume selects volumes of a NIfTI file, and {path} is not one")
    return GeoTiffSource(path, bands=bands, nodata_rule=nodata_rule)


@dataclass
class SliceContext:
    """2.5-D input: each voxel carries its ``slices`` neighbours on both sides along ``axis``.

    Channels are ``source.channels * (2 * slices + 1)``, channel-major: channel
    ``c`` at offsets ``-slices .. +slices`` (reversed when ``reverse``, so the
    order follows the model's view of the axis). Beyond the volume's ends the
    edge slice repeats.
    """

    source: Source
    axis: int
    slices: int
    reverse: bool = False

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not yet set while unpickling
            raise AttributeError(name)
        return getattr(self.source, name)

    @property
    def channels(self) -> int:
        return self.source.channels * (2 * self.slices + 1)

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        k, axis = self.slices, self.axis
        start, stop = box.start[axis], box.stop[axis]
        lo, hi = max(0, start - k), min(self.source.shape[axis], stop + k)
        data, valid = self.source.read(box.with_axis(axis, lo, hi))
        pad = [(0, 0)] * data.ndim
        pad[axis + 1] = (lo - (start - k), (stop + k) - hi)
        data = np.pad(data, pad, mode="edge")
        offsets = range(2 * k, -1, -1) if self.reverse else range(2 * k + 1)
        n = stop - start
        stacked = np.stack([np.take(data, range(d, d + n), axis=axis + 1) for d in offsets], axis=1)
        centre = valid[box.with_axis(axis, start, stop).slices(box.with_axis(axis, lo, hi).start)]
        return stacked.reshape(-1, *box.shape), centre

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "context": self.slices, "context_axis": self.axis}


def sample_voxels(source: Source, *, limit: int = 2**20) -> np.ndarray:
    """A strided subsample of the valid pixels, ``(channels, n)`` with ``n <= ~limit``.

    Reads one plane (along axis 0) at a time, every ``step`` planes, and keeps
    every ``step``-th pixel along the other axes: never the whole scene at once.
    """
    step = max(1, math.ceil((math.prod(source.shape) / limit) ** (1 / len(source.shape))))
    parts = []
    for z in range(step // 2 % source.shape[0], source.shape[0], step):
        plane = Box((z, *(0,) * (len(source.shape) - 1)), (z + 1, *source.shape[1:]))
        data, valid = source.read(plane)
        keep = (slice(None), slice(None), *(slice(step // 2 % n, None, step) for n in source.shape[1:]))
        parts.append(data[keep][:, valid[keep[1:]]])
    return np.concatenate(parts, axis=1)

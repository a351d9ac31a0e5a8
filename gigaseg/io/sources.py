"""The source contract: what the pipeline needs from an input, whatever its format.

A source is a scene of ``shape`` (spatial axes only: ``(y, x)`` or
``(z, y, x)``) with ``channels`` values per pixel, read box by box. It must be
picklable (Dask ships it to workers) and reopen its file handles lazily in
each process and thread. ``georef`` is whatever the store writes so the mask
lands where the input is: a :class:`~gigaseg.io.georef.Georef` for rasters, a
:class:`~gigaseg.io.niftiref.NiftiRef` for NIfTI volumes (and the like for
2-D and 3-D ``.npy`` arrays, :class:`~gigaseg.io.array.ArraySource`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from gigaseg.errors import InputError
from gigaseg.io.array import ArraySource
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.nifti import NiftiSource, is_nifti
from gigaseg.io.niftiref import NiftiRef
from gigaseg.io.remote import is_local
from gigaseg.io.stac import is_stac, open_stac
from gigaseg.tiler import Box
from gigaseg.tiler.axes import AxisView
from gigaseg.tiler.regrid import Regrid, resample


@runtime_checkable
class Source(Protocol):
    """A scene read box by box: float32 ``(channels, *box.shape)`` and validity ``box.shape``.

    Every data member is read-only (a property here), so a source may keep it
    as a plain attribute, a class attribute or a property, with a narrower type
    (``tuple[int, int]`` for a raster's shape, ``Georef`` for its georef).
    ``read`` returns fresh arrays the caller may change in place; ``close``
    lets this thread's handles go, and a later read opens them again.
    """

    @property
    def path(self) -> str:
        """The file read, for messages and provenance."""
        ...

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial axes only: ``(y, x)`` or ``(z, y, x)``."""
        ...

    @property
    def channels(self) -> int: ...

    @property
    def spacing(self) -> tuple[float, ...]:
        """Pixel (voxel) size per axis, in ``unit``."""
        ...

    @property
    def unit(self) -> str:
        """``"m"`` (CRS units, or pixels without a CRS) or ``"mm"``."""
        ...

    @property
    def georef(self) -> Georef | NiftiRef: ...

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

    def axis_view(self, *, canonical: bool = False, orientation: str | None = None) -> AxisView: ...


def open_source(
    path: str | Path,
    *,
    bands: Sequence[int] | None = None,
    nodata_rule: str = "all-bands",
    volume: int | str | None = None,
    cache_dir: str | Path | None = None,
    cache_max: int | None = None,
    header_only: bool = False,
    spatial_dims: int | None = None,
    assets: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
) -> Source:
    """The source for ``path``: NIfTI for ``.nii``/``.nii.gz``, a memory-mapped
    :class:`~gigaseg.io.array.ArraySource` for ``.npy``, else anything GDAL opens.

    ``path`` may be a URL (``https://``, ``s3://``, ``gs://``, ``az://``) or a GDAL
    name (``/vsizip/a.zip/b.tif``, ``/vsicurl/...``, a VRT): rasters are read
    through GDAL's virtual file systems, NIfTI files through fsspec
    (:mod:`gigaseg.io.remote`). A ``.npy`` array is a local file.

    ``nodata_rule`` says when a raster's pixel is nodata
    (:data:`~gigaseg.io.geotiff.NODATA_RULES`); a NIfTI volume or a ``.npy``
    array has no nodata value, only non-finite voxels. ``header_only`` opens it
    for planning: no ``.nii.gz`` is decompressed into the cache.
    ``spatial_dims`` says how many trailing axes of a ``.npy`` array are
    spatial (an image's channels come first); by default a 2- or 3-axis array
    has one channel (a 3-axis one is a volume) and a 4-axis one is a volume
    with channels first; other formats know their own.
    A STAC item (``item.json``, ``items.json#<item id>``) is read as one raster
    of its ``assets``, or of those that match ``band_names`` (the model card's).
    """
    if is_nifti(path):
        if bands:
            raise InputError(
                "bands picks the channels of a raster; choose the volumes of a NIfTI file with volume",
                parameters=("bands", "volume"),
            )
        return NiftiSource(path, volume=volume, cache_dir=cache_dir, cache_max=cache_max, header_only=header_only)
    if volume is not None:
        raise InputError(f"volume selects volumes of a NIfTI file, and {path} is not one", parameters=("volume",))
    if is_npy(path):
        if not is_local(path):
            raise InputError(f".npy arrays are read from local files; download {path} first")
        return ArraySource.from_npy(path, spatial_dims=spatial_dims, bands=list(bands) if bands else None)
    if is_stac(path):
        return open_stac(path, assets=assets, band_names=band_names, bands=bands, nodata_rule=nodata_rule)
    if assets:
        raise InputError(f"assets names the bands of a STAC item, and {path} is not one", parameters=("assets",))
    return GeoTiffSource(path, bands=list(bands) if bands else None, nodata_rule=nodata_rule, band_names=band_names)


def is_npy(path: str | Path) -> bool:
    return str(path).lower().endswith(".npy")


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


# What a source gives on its own grid only: raw reads, its file's blocks, its raw type.
SCENE_GRID_ONLY = ("read_native", "block_shape", "dtype")


@dataclass
class OnModelGrid:
    """``source`` resampled, linearly, to the voxels of a model's grid (:class:`~gigaseg.tiler.regrid.Regrid`).

    Each box of the model grid reads the box of the scene around it, so strips
    stream as they do from the scene itself. Invalid voxels are read as 0 and
    their validity is interpolated too: a model voxel is valid where more than
    half of its interpolation weight lies on valid voxels. ``georef`` stays the
    scene's: the output is written on the scene's grid.
    """

    source: Source
    regrid: Regrid

    def __getattr__(self, name: str) -> Any:
        if name in ("source", "regrid") or name in SCENE_GRID_ONLY:  # unset while unpickling; or the scene's own
            raise AttributeError(name)
        return getattr(self.source, name)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.regrid.model_shape

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.regrid.model_spacing(tuple(self.source.spacing))

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        reads = self.regrid.to_scene(box)
        data, valid = self.source.read(reads)
        data[:, ~valid] = 0
        shapes = (self.regrid.shape, self.regrid.model_shape)
        values = resample(torch.from_numpy(data), reads, box, shapes)
        inside = resample(torch.from_numpy(valid.astype(np.float32)), reads, box, shapes, lead=0) > 0.5
        return values.numpy(), inside.numpy()

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "model_grid": list(self.regrid.model_shape)}


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

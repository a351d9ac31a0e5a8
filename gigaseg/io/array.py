"""A numpy array (in memory or memory-mapped ``.npy``) read box by box like a file source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from gigaseg.errors import InputError, SourceError
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import check_bands
from gigaseg.io.niftiref import NiftiRef
from gigaseg.tiler import Box


class ArraySource:
    """``(C, *spatial)`` or ``(*spatial)`` array with the ``read(box)`` contract of file sources.

    ``spatial_dims`` says how many trailing axes are spatial; an array with one
    more axis has channels first, one with exactly that many has one channel.
    A memory-mapped array (``np.load(path, mmap_mode="r")``) is read box by box,
    never whole. Pixels equal to ``nodata`` or not finite are invalid. ``bands``
    (1-based) selects channels without copying them out of the array.

    Space. ``spacing`` (default ones) is the pixel size per axis. A 2-D array
    lies in pixel coordinates like a raster without a CRS: ``georef`` is
    ``Georef(None, ...)`` and ``unit`` ``"m"`` (lengths such as ``"5120m"``
    count its pixels). A 3-D array ``(z, y, x)`` is a volume in ``"mm"`` with
    the NIfTI reference of one whose voxel ``(i, j, k)`` is ``array[:, k, j, i]``,
    aligned to the axes.

    A source made by :meth:`from_npy` pickles as its path and options and maps
    the file again on first use (after unpickling, or after :meth:`close`); an
    in-memory array pickles with its values.
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        spatial_dims: int,
        nodata: float | None = None,
        band_names: list[str] | None = None,
        path: str | None = None,
        bands: list[int] | None = None,
        spacing: tuple[float, ...] | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise InputError(f"an array source is 2-D or 3-D, not {spatial_dims}-D")
        expand = array.ndim == spatial_dims
        if expand:
            array = array[None]
        if array.ndim != spatial_dims + 1:
            raise InputError(
                f"an array of shape {array.shape} cannot hold {spatial_dims}-D data: "
                f"expected {spatial_dims} spatial axes with an optional channel axis first"
            )
        self.path: str = path or f"<array {array.shape} {array.dtype}>"
        self._array: np.ndarray | None = array
        self._file: str | None = None  # a .npy file mapped again on demand (from_npy)
        self._expand = expand
        self.bands = check_bands(bands, array.shape[0], self.path)
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape[1:])
        self.dtype = array.dtype
        self.nodata = nodata
        self.band_names = band_names or [f"band{b}" for b in self.bands]
        self.spacing: tuple[float, ...] = _check_spacing(spacing, spatial_dims)
        self.unit = "m" if spatial_dims == 2 else "mm"
        self.georef: Georef | NiftiRef = array_georef(self.shape, self.spacing, name=self.path)

    @classmethod
    def from_npy(cls, path: str | Path, *, spatial_dims: int | None = None, **kw: Any) -> ArraySource:
        """A memory-mapped ``.npy`` file.

        Without ``spatial_dims``, a 2- or 3-axis array has one channel (a 3-axis
        one is a volume) and a 4-axis one is a volume with channels first.
        """
        if not os.path.exists(path):
            raise SourceError(f"input {path} does not exist")
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot read {path} as a .npy array: {e}") from None
        if spatial_dims is None:
            spatial_dims = min(array.ndim, 3)
        source = cls(array, spatial_dims=spatial_dims, path=str(path), **kw)
        source._file = str(path)
        return source

    @property
    def array(self) -> np.ndarray:
        """The whole ``(C, *spatial)`` array, every channel (mapped again if it was let go)."""
        if self._array is None:
            assert self._file is not None
            try:
                array = np.load(self._file, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise SourceError(f"cannot read {self._file} as a .npy array: {e}") from None
            array = array[None] if self._expand else array
            if tuple(array.shape[-len(self.shape) :]) != self.shape or array.dtype != self.dtype:
                raise SourceError(f"{self._file} changed since it was opened: {array.shape} {array.dtype}")
            self._array = array
        return self._array

    @property
    def channels(self) -> int:
        return len(self.bands)

    def describe(self) -> dict[str, Any]:
        nodata = None if self.nodata is None else float(self.nodata)
        return {"bands": list(self.bands), "nodata": nodata, "memory_mapped": self._file is not None}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._file is not None:
            state["_array"] = None  # the file, not its values: mapped again on first use
        return state

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Values of ``box`` as float32 ``(C, *box.shape)`` and validity ``box.shape``.

        The values are always a fresh copy, which callers may change in place.
        """
        if len(box.start) != len(self.shape) or any(
            a < 0 or b > n for a, b, n in zip(box.start, box.stop, self.shape, strict=True)
        ):
            raise InputError(f"{box} is outside {self.path}, whose shape is {self.shape}")
        array, slices = self.array, box.slices()
        data = np.empty((self.channels, *box.shape), np.float32)
        for i, band in enumerate(self.bands):  # one converting copy per channel, never every band
            index: tuple[Any, ...] = (band - 1, *slices)
            data[i] = array[index]
        valid = np.asarray(np.isfinite(data).all(axis=0))
        if self.nodata is not None:
            valid &= (data != np.float32(self.nodata)).all(axis=0)
        return data, valid

    def close(self) -> None:
        """Let a file's memory map go (the next read maps it again); an in-memory array stays."""
        if self._file is not None:
            self._array = None


def _check_spacing(spacing: tuple[float, ...] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(s > 0 for s in values):
        raise InputError(f"spacing must be {ndim} positive sizes, one per spatial axis, got {spacing}")
    return values


def array_georef(shape: tuple[int, ...], spacing: tuple[float, ...], *, name: str) -> Georef | NiftiRef:
    """Where an array lies: pixel coordinates in 2-D; an axis-aligned NIfTI volume in 3-D."""
    if len(shape) == 2:
        return Georef(None, (spacing[1], 0.0, 0.0, 0.0, spacing[0], 0.0))
    klass = nib.Nifti2Header if max(shape) > 32767 else nib.Nifti1Header
    header = klass()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape[::-1])  # (i, j, k) = (x, y, z)
    header.set_xyzt_units("mm")
    affine = np.diag([*spacing[::-1], 1.0])
    header.set_sform(affine, code=2)  # "aligned": axes of the array, no origin
    header.set_qform(affine, code=2)
    return NiftiRef.from_header(header, name=name)

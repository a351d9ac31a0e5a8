"""Reference labels read on a mask's grid, for ``gigaseg evaluate``: a raster, or vector labels.

A raster on another grid than the mask (CRS, transform or size) is resampled
onto the mask's grid by nearest neighbour through a GDAL warped VRT, with a
warning; one without a CRS must be on the mask's grid.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from gigaseg.errors import InputError
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GigasegWarning, open_dataset
from gigaseg.io.store import MaskStore
from gigaseg.io.vectors import VectorLabels, is_vector_path
from gigaseg.tiler import Box


class Reference(Protocol):
    """Reference labels read on the mask's grid: class indices and where they are labelled."""

    description: str

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def open_reference(
    path: str | Path,
    store: MaskStore,
    *,
    label_offset: int = 0,
    ignore_value: int | str | None = None,
    attribute: str | None = None,
) -> Reference:
    """Vector labels for a .gpkg/.geojson/.shp/... path, a raster otherwise."""
    if is_vector_path(path):
        return VectorReference(path, store, label_offset=label_offset, ignore_value=ignore_value, attribute=attribute)
    if attribute is not None:
        raise InputError(
            f"attribute names a column of vector labels; {path} is read as a raster", parameters=("attribute",)
        )
    if ignore_value is not None:
        try:
            ignore_value = int(ignore_value)
        except ValueError:
            raise InputError(
                f"ignore_value must be a number for a raster reference, got {ignore_value!r}",
                parameters=("ignore_value",),
            ) from None
    return RasterReference(path, store, label_offset=label_offset, ignore_value=ignore_value)


class VectorReference:
    """Points or polygons burnt onto each chunk row of the mask's grid."""

    def __init__(
        self,
        path: str | Path,
        store: MaskStore,
        *,
        label_offset: int,
        ignore_value: int | str | None,
        attribute: str | None,
    ) -> None:
        ignore = () if ignore_value is None else (_number_or_name(ignore_value),)
        nodata = 255 if len(store.classes) < 255 else 65535
        self.labels = VectorLabels(
            path, attribute=attribute, classes=store.classes, offset=label_offset, ignore=ignore, nodata=nodata
        )
        self.georef = store.georef
        self.description = f"{path} ({len(self.labels)} features, attribute {self.labels.attribute!r})"

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        labels = self.labels.rasterize(box, self.georef)
        return labels, labels != self.labels.nodata

    def close(self) -> None:
        pass


def _number_or_name(value: int | str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


class RasterReference:
    """Band 1 of a raster of class labels, on the mask's grid or resampled onto it."""

    def __init__(self, path: str | Path, store: MaskStore, *, label_offset: int, ignore_value: int | None) -> None:
        self.path = str(path)
        self.offset, self.ignore, self.classes = label_offset, ignore_value, len(store.classes)
        self.dataset = open_dataset(self.path)
        if self.dataset.count > 1:
            warnings.warn(f"{path} has {self.dataset.count} bands; band 1 holds the labels", GigasegWarning, 3)
        kind = np.dtype(self.dataset.dtypes[0]).kind
        if kind not in "iuf":
            raise InputError(f"{path} holds {self.dataset.dtypes[0]} values; reference labels are integers")
        self.source = self._on_grid(store.georef, store.mask.shape)

    def _on_grid(self, georef: Georef, shape: tuple[int, ...]) -> rasterio.DatasetReader | WarpedVRT:
        ds = self.dataset
        same_crs = _crs(ds.crs) == _crs(georef.crs_wkt)
        same_transform = np.allclose(
            tuple(ds.transform)[:6], georef.transform, rtol=0, atol=1e-9 * max(georef.pixel_size)
        )
        if same_crs and same_transform and (ds.height, ds.width) == tuple(shape):
            self.description = f"{self.path} (raster, on the mask's grid)"
            return ds
        if ds.crs is None or georef.crs_wkt is None:
            raise InputError(
                f"{self.path} is on another grid than the mask and {'it' if ds.crs is None else 'the mask'} "
                "has no CRS to resample by; warp it onto the mask's grid first (gdalwarp -r near)"
            )
        if not _overlap(ds, georef, shape):
            raise InputError(f"{self.path} does not overlap the mask: is it a reference for this scene?")
        warnings.warn(
            f"{self.path} is on another grid than the mask: resampled onto it by nearest neighbour",
            GigasegWarning,
            stacklevel=4,
        )
        self.description = f"{self.path} (raster, resampled onto the mask's grid by nearest neighbour)"
        return WarpedVRT(
            ds,
            crs=georef.crs_wkt,
            transform=georef.affine,
            height=shape[0],
            width=shape[1],
            resampling=Resampling.nearest,
            add_alpha=ds.nodata is None,  # outside the reference: masked, not label 0
        )

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        (row, col), (height, width) = box.start, box.shape
        values = self.source.read(1, window=Window(col, row, width, height), masked=True)
        labelled = ~np.ma.getmaskarray(values)
        data = np.ma.getdata(values)
        if data.dtype.kind == "f":
            if not np.array_equal(data[labelled], np.round(data[labelled])):
                raise InputError(f"{self.path} holds fractions; reference labels are integers")
            data = data.astype(np.int64)
        if self.ignore is not None:
            labelled &= data != self.ignore
        labels = data.astype(np.int64) - self.offset
        bad = labelled & ((labels < 0) | (labels >= self.classes))
        if bad.any():
            r, c = (int(i[0]) for i in np.nonzero(bad))
            raise InputError(
                f"{self.path} holds {int(data[r, c])} at row {row + r}, col {col + c}, not a class of the mask "
                f"(0..{self.classes - 1} plus label_offset {self.offset}); pass label_offset, or "
                "ignore_value for a value that is no class",
                parameters=("label_offset", "ignore_value"),
            )
        return labels, labelled

    def close(self) -> None:
        self.source.close()
        self.dataset.close()


def _overlap(ds: rasterio.DatasetReader, georef: Georef, shape: tuple[int, ...]) -> bool:
    """Whether the reference's extent, in the mask's CRS, meets the mask's."""
    left, bottom, right, top = transform_bounds(ds.crs, georef.crs_wkt, *ds.bounds, densify_pts=21)
    corners = [georef.affine @ xy for xy in ((0, 0), (shape[1], 0), (0, shape[0]), (shape[1], shape[0]))]
    xs, ys = zip(*corners, strict=True)
    return left < max(xs) and right > min(xs) and bottom < max(ys) and top > min(ys)


def _crs(value: Any) -> CRS | None:
    if not value:
        return None
    return value if isinstance(value, CRS) else CRS.from_user_input(value)

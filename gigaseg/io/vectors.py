"""Vector labels: points or polygons with a class attribute, burnt onto any window of a raster grid.

A GeoPackage, GeoJSON, Shapefile (any vector format GDAL reads) is loaded once
with pyogrio: label files are small next to the scenes they label. Geometries
are reprojected to the image's CRS when the two differ, vertex by vertex with
GDAL (no densification: fine for label polygons, whose edges are short), and
kept in a shapely STRtree, so rasterising a small window of a huge scene only
touches the features near it.

Rasterisation is GDAL's (:func:`rasterio.features.rasterize`): a point burns
the pixel it falls in, a line the pixels it crosses, a polygon the pixels whose
centre lies inside (``all_touched=False``). Where features overlap, the later one
in the file wins. Windows are burnt on the grid of the whole image, so tiles of a
grid give the pixels of the whole grid.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import transform as warp_points

from gigaseg.errors import InputError, SourceError
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.tiler import Box

# Column names taken as the class attribute when none is given (compared lower-case).
CLASS_COLUMNS = ("class", "classes", "class_id", "classid", "class_name", "classname", "label", "labels", "label_id")

# File name endings read as vector labels by the commands that take either a raster or vectors.
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite")

Value = int | str


def is_vector_path(path: str | Path) -> bool:
    """Whether a labels path names a vector file (by its ending), rather than a raster."""
    return str(path).lower().endswith(VECTOR_SUFFIXES)


class VectorLabels:
    """Class labels of points or polygons, rasterised window by window onto an image's grid.

    ``attribute`` is the class column; by default the one integer or string column
    named like ``class`` or ``label``. Integer values ``v`` are class ``v - offset``;
    string values are class names, looked up in ``classes``. Features whose value
    is in ``ignore`` (compared before the offset) burn ``nodata``, hiding what lies
    under them; features without a value or a geometry are skipped. ``crs_wkt`` is
    the labels' CRS where the file does not say (a Shapefile without .prj).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        attribute: str | None = None,
        classes: Sequence[str] | None = None,
        offset: int = 0,
        ignore: Sequence[Value] = (),
        crs_wkt: str | None = None,
        layer: str | int | None = None,
        nodata: int = 255,
    ) -> None:
        self.path = str(path)
        self.classes = list(classes) if classes is not None else None
        if not 0 <= nodata <= 65535:
            raise InputError(f"nodata of labels must be 0..65535, got {nodata}")
        self.nodata = nodata
        info = _read_info(self.path, layer)
        self.attribute = _pick_attribute(self.path, info, attribute)
        _meta, _fids, wkb, fields = _read(self.path, layer, self.attribute)
        raw = fields[0]
        kind = _column_kind(self.path, self.attribute, info)
        geometries = shapely.from_wkb(wkb)  # None stays None
        keep = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries) | _missing(raw))
        if not keep.all():
            warnings.warn(
                f"{self.path}: {int((~keep).sum())} of {len(keep)} features have no geometry or no "
                f"{self.attribute!r}; skipped",
                GigasegWarning,
                stacklevel=2,
            )
        self.geometries = geometries[keep]
        self.values = _class_indices(raw[keep], kind, self, offset=offset, ignore=ignore)
        self.dtype = np.dtype(np.uint8 if max(nodata, int(self.values.max(initial=0))) <= 255 else np.uint16)
        self.crs_wkt = _crs_wkt(info.get("crs")) or crs_wkt
        self._by_crs: dict[str | None, tuple[np.ndarray, shapely.STRtree]] = {}

    def __len__(self) -> int:
        return len(self.values)

    def rasterize(self, box: Box, georef: Georef) -> np.ndarray:
        """Class labels of the pixels of ``box`` on the grid of ``georef``: ``(h, w)``, nodata where no feature."""
        shape = box.shape
        if len(shape) != 2:
            raise InputError(f"vector labels burn onto 2-D grids, not a {len(shape)}-D box")
        window = georef.affine @ Affine.translation(box.start[1], box.start[0])
        geometries, tree = self._indexed(georef.crs_wkt)
        near = np.sort(tree.query(shapely.box(*_bounds(window, shape))))
        if len(near) == 0:
            return np.full(shape, self.nodata, self.dtype)
        shapes = zip(geometries[near], self.values[near].tolist(), strict=True)
        return rasterize(
            shapes, out_shape=shape, transform=window, fill=self.nodata, all_touched=False, dtype=self.dtype
        )

    def _indexed(self, target_wkt: str | None) -> tuple[np.ndarray, shapely.STRtree]:
        """The geometries in the image's CRS and their spatial index, made once per CRS."""
        if target_wkt not in self._by_crs:
            geometries = _reproject(self.geometries, self.crs_wkt, target_wkt, self.path)
            self._by_crs[target_wkt] = (geometries, shapely.STRtree(geometries))
        return self._by_crs[target_wkt]


def _read_info(path: str, layer: str | int | None) -> dict:
    if not os.path.exists(path):
        raise SourceError(f"labels {path} do not exist")
    try:
        return pyogrio.read_info(path, layer=layer)
    except (DataSourceError, DataLayerError) as e:
        raise SourceError(f"cannot read {path} as vector labels: {_first_line(e)}") from None


def _read(path: str, layer: str | int | None, attribute: str) -> tuple:
    try:
        return pyogrio.raw.read(path, layer=layer, columns=[attribute], force_2d=True)
    except (DataSourceError, DataLayerError) as e:
        raise SourceError(f"cannot read {path} as vector labels: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0].split(";")[0] if text else type(error).__name__


def _pick_attribute(path: str, info: dict, attribute: str | None) -> str:
    fields = [str(f) for f in info["fields"]]
    if attribute is not None:
        if attribute not in fields:
            raise InputError(f"{path} has no attribute {attribute!r}; its attributes are {_names(fields)}")
        return attribute
    usable = [f for f, t in zip(fields, info["dtypes"], strict=True) if _kind(t) is not None]
    named = [f for f in usable if f.lower() in CLASS_COLUMNS]
    if len(named) == 1:
        return named[0]
    if named:
        raise InputError(
            f"{path} has several class attributes ({_names(named)}); pick one with attribute", parameters=("attribute",)
        )
    raise InputError(
        f"{path} has no field named like 'class' or 'label'; its attributes are {_names(fields)}: "
        "pick one with attribute",
        parameters=("attribute",),
    )


def _names(fields: Sequence[str]) -> str:
    return ", ".join(repr(f) for f in fields) if fields else "none"


def _kind(dtype: object) -> str | None:
    """'int', 'float' or 'str' for a column pyogrio can hand us as class values; None otherwise."""
    return {"i": "int", "u": "int", "f": "float", "O": "str", "U": "str"}.get(np.dtype(str(dtype)).kind)


def _column_kind(path: str, attribute: str, info: dict) -> str:
    dtype = dict(zip(info["fields"], info["dtypes"], strict=True))[attribute]
    kind = _kind(dtype)
    if kind is None:
        raise InputError(f"attribute {attribute!r} of {path} is {dtype}; class values are integers or names")
    return kind


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None for v in values], bool)
    return np.zeros(len(values), bool)


def _class_indices(
    raw: np.ndarray, kind: str, labels: VectorLabels, *, offset: int, ignore: Sequence[Value]
) -> np.ndarray:
    """The class index of each feature (nodata for ignored values), checked against the classes."""
    path, attribute, classes = labels.path, labels.attribute, labels.classes
    if kind == "str":
        ignored = np.isin(raw.astype(str), [str(v) for v in ignore])
        if classes is None:
            raise InputError(f"{attribute!r} of {path} holds class names; give the class names to match them")
        lookup = {name: i for i, name in enumerate(classes)}
        unknown = sorted({v for v, skip in zip(raw, ignored, strict=True) if not skip and v not in lookup})
        if unknown:
            raise InputError(
                f"{attribute!r} of {path} holds {_names(unknown)}, not among the classes {_names(classes)}"
            )
        values = np.array([lookup.get(v, labels.nodata) for v in raw], np.int64)
    else:
        numbers = raw.astype(np.float64)
        if not np.array_equal(numbers, np.round(numbers)):
            raise InputError(f"{attribute!r} of {path} holds fractions; class values are integers or names")
        ignored = np.isin(numbers, [float(v) for v in ignore if not isinstance(v, str)])
        values = numbers.astype(np.int64) - offset
    return _checked(np.where(ignored, labels.nodata, values), ignored, labels, offset=offset)


def _checked(values: np.ndarray, ignored: np.ndarray, labels: VectorLabels, *, offset: int) -> np.ndarray:
    classes, nodata = labels.classes, labels.nodata
    if classes is not None and nodata < len(classes):
        raise InputError(f"nodata {nodata} is a class index; pick a value of {len(classes)} or more")
    top = len(classes) if classes is not None else nodata
    bad = (~ignored) & ((values < 0) | (values >= top) | (values == nodata))
    if bad.any():
        shown = sorted({int(v) + offset for v in values[bad]})[:5]
        span = f"{offset}..{top - 1 + offset}" if classes is not None else f"{offset} or more, not {nodata + offset}"
        raise InputError(
            f"{labels.attribute!r} of {labels.path} holds {_names([str(v) for v in shown])} in {int(bad.sum())} "
            f"features; class values must be {span} (label offset {offset})"
        )
    return values


def _crs_wkt(crs: str | None) -> str | None:
    if not crs:
        return None
    try:
        return CRS.from_user_input(crs).to_wkt()
    except CRSError:
        return None


def _reproject(geometries: np.ndarray, source: str | None, target: str | None, path: str) -> np.ndarray:
    """The geometries in ``target``'s CRS; taken as they are when one side has no CRS (with a warning)."""
    if source is None and target is None:
        raise InputError(
            f"neither {path} nor the image has a CRS, so the labels cannot be placed on the image; "
            "give the labels' CRS (crs_wkt)"
        )
    if source is None or target is None:
        missing = f"{path} has no CRS" if source is None else "the image has no CRS"
        warnings.warn(f"{missing}: the labels' coordinates are taken as the image's", GigasegWarning, stacklevel=4)
        return geometries
    if _same_crs(source, target, path):
        return geometries

    def to_target(xy: np.ndarray) -> np.ndarray:
        xs, ys = warp_points(source, target, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    moved = shapely.transform(geometries, to_target)
    if not np.isfinite(shapely.bounds(moved)).all():
        raise InputError(f"some labels of {path} lie outside the area where the image's CRS is defined")
    return moved


def _same_crs(source: str, target: str, path: str) -> bool:
    try:
        return CRS.from_user_input(source) == CRS.from_user_input(target)
    except CRSError as e:
        raise InputError(f"cannot place the labels of {path} on the image: {e}") from None


def _bounds(transform: Affine, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a window's four corners: right for rotated grids too."""
    h, w = shape
    xs, ys = zip(*(transform @ corner for corner in ((0, 0), (w, 0), (0, h), (w, h))), strict=True)
    return min(xs), min(ys), max(xs), max(ys)

"""STAC inputs: an Item, an ItemCollection or a static catalog, one scene per item.

An item's bands usually lie in separate single-band COGs (Sentinel-2's
``B02.tif``, ``B03.tif``, ...). They are stacked on the fly as the bands of a
GDAL VRT (what ``gdalbuildvrt -separate`` writes), each band a ``SimpleSource``
reading its asset where it lies: a local file, ``/vsicurl/`` for http(s),
``/vsis3/`` for ``s3://``. The VRT is XML text kept in the source, which GDAL
opens as it is in every process and thread: nothing is written anywhere, and
Dask workers on other machines open the same assets.

Assets on grids of different resolutions (Sentinel-2's 10 m and 20 m bands) are
resampled, nearest neighbour, to the finest grid in the VRT itself
(``SrcRect``/``DstRect`` scaling), with a warning; they must share their CRS and
cover the same area. One item is named ``items.json#<item id>`` where its file
holds several (a job file's scenes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigaseg.errors import GigasegWarning, InputError, SourceError
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.remote import gdal_message, gdal_options, gdal_path, is_remote, is_url, with_retries

# The STAC object types read (a FeatureCollection is an ItemCollection).
STAC_TYPES = ("Feature", "FeatureCollection", "Catalog", "Collection")

# Media types and file suffixes of raster assets (for matching and for listing them in messages).
RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-hdf")
NOT_DATA_ROLES = ("thumbnail", "overview", "visual", "metadata")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

# numpy dtype -> GDAL data type name of a VRT band.
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


def split_ref(path: str | Path) -> tuple[str, str | None]:
    """``items.json#S2A_x`` -> ``("items.json", "S2A_x")``; a path without an item id -> ``(path, None)``."""
    text = str(path)
    head, sep, item_id = text.rpartition("#")
    if sep and item_id and head.lower().endswith(".json"):
        return head, item_id
    return text, None


def is_stac(path: str | Path) -> bool:
    """Whether ``path`` (a local path or a URL, ``#<item id>`` allowed) is a STAC Item, ItemCollection or catalog.

    The name must end in ``.json``; then the file is read, and only JSON that is
    plainly something else (no STAC ``type``) says no. A ``.json`` that cannot be
    read counts as STAC, so its error is the STAC reader's, not GDAL's.
    """
    file, _ = split_ref(path)
    if not file.lower().endswith(".json"):
        return False
    try:
        data = _read_json(file)
    except (OSError, ValueError, SourceError):
        return True
    return isinstance(data, dict) and data.get("type") in STAC_TYPES


def read_items(path: str | Path) -> list[Any]:
    """The items of a STAC Item, ItemCollection or static Catalog/Collection (walked recursively).

    ``path#<item id>`` keeps that item alone. Every item has a self href, so
    relative asset hrefs resolve against the file it was read from.
    """
    pystac = _pystac()
    file, item_id = split_ref(path)
    href = _absolute(file)
    data = _read_json(file)
    kind = data.get("type") if isinstance(data, dict) else None
    io = _stac_io()
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(data, href=href, migrate=True)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data).items)
        elif kind in ("Catalog", "Collection"):
            catalog = pystac.read_dict(data, href=href, stac_io=io)
            items = list(catalog.get_items(recursive=True))  # type: ignore[union-attr]
        else:
            raise InputError(f"{file} is not a STAC Item, ItemCollection or Catalog (its type is {kind!r})")
    except (pystac.STACError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{file} is not a valid STAC {kind}: {_first_line(e)}") from None
    for item in items:
        if item.get_self_href() is None:
            item.set_self_href(href)  # assets of an ItemCollection resolve against its file
    if item_id is not None:
        items = [item for item in items if item.id == item_id]
        if not items:
            raise InputError(f"{file} holds no STAC item {item_id!r}; its items are {_names(item_ids(file))}")
    if not items:
        raise InputError(f"{file} holds no STAC items")
    return items


def item_ids(path: str | Path) -> list[str]:
    """The ids of the items ``path`` holds, in order."""
    return [item.id for item in read_items(split_ref(path)[0])]


def raster_assets(item: Any) -> list[str]:
    """The keys of the item's assets that look like rasters (by media type, suffix or band metadata)."""
    found = []
    for key, asset in item.assets.items():
        if any(role in NOT_DATA_ROLES for role in asset.roles or ()):
            continue
        media = (asset.media_type or "").lower()
        suffix = asset.href.lower().split("?")[0]
        if (
            any(media.startswith(t) for t in RASTER_TYPES)
            or suffix.endswith(RASTER_SUFFIXES)
            or _band_fields(asset) is not None
        ):
            found.append(key)
    return found


def choose_assets(item: Any, assets: Sequence[str] | None, band_names: Sequence[str] | None) -> list[str]:
    """The asset keys to stack, in band order.

    An explicit ``assets`` list wins (each an asset key, or a band name of a
    single-band asset: ``red``); else the model card's ``band_names``, matched to
    asset keys or their bands' ``name``/``common_name``; else one line listing the
    item's raster assets.
    """
    if assets:
        missing = [name for name in assets if _find(item, name) is None]
        if missing:
            raise InputError(
                f"STAC item {item.id} has no asset {', '.join(missing)} named in assets; "
                f"its rasters are {_names(raster_assets(item))}",
                parameters=("assets",),
            )
        return [_find(item, name) for name in assets]  # type: ignore[misc]
    if band_names:
        found = {name: _find(item, name) for name in band_names}
        if all(found.values()):
            return [found[name] for name in band_names]  # type: ignore[misc]
        unmatched = [name for name, key in found.items() if key is None]
        raise InputError(
            f"the model's bands {', '.join(unmatched)} match no asset of STAC item {item.id} "
            f"(its rasters are {_names(raster_assets(item))}); choose them with assets",
            parameters=("assets",),
        )
    raise InputError(
        f"the model card names no bands to match with an asset of STAC item {item.id} "
        f"(its rasters are {_names(raster_assets(item))}); choose them with assets",
        parameters=("assets",),
    )


def asset_hrefs(item: Any, keys: Sequence[str]) -> dict[str, str]:
    """``{key: absolute href}`` of the chosen assets (relative hrefs resolved against the item's file)."""
    return {key: item.assets[key].get_absolute_href() or item.assets[key].href for key in keys}


def item_vrt(item: Any, keys: Sequence[str]) -> str:
    """A GDAL VRT (XML text) stacking the single-band assets ``keys`` of ``item`` as its bands.

    The grid is the finest asset's; a coarser asset is scaled onto it (nearest
    neighbour) with a warning. Assets must be single-band, share one CRS, be
    north-up and cover the same area. Each band keeps its asset's nodata value
    and is named by its key; all bands take the widest of the assets' types.
    """
    import rasterio
    from rasterio.errors import RasterioError

    hrefs = asset_hrefs(item, keys)
    grids = []
    for key in keys:
        path = gdal_path(hrefs[key])
        try:
            with rasterio.Env(**gdal_options(path)), rasterio.open(path) as ds:
                grids.append(_Grid(key, path, ds))
        except RasterioError as e:
            raise SourceError(
                f"cannot read asset {key} of STAC item {item.id} ({hrefs[key]}): {gdal_message(e)}"
            ) from None
    for grid in grids:
        if grid.count != 1:
            raise InputError(
                f"asset {grid.key} of STAC item {item.id} has {grid.count} bands; "
                "each asset is stacked as one band: choose single-band ones with assets",
                parameters=("assets",),
            )
        if grid.crs != grids[0].crs:
            raise InputError(
                f"assets {grids[0].key} and {grid.key} of STAC item {item.id} lie in different CRSs; "
                "they must share one to be stacked"
            )
        if grid.transform[1] != 0 or grid.transform[3] != 0:
            raise InputError(f"asset {grid.key} of STAC item {item.id} is rotated; only north-up assets are stacked")
    target = min(grids, key=lambda g: abs(g.transform[0] * g.transform[4]))
    t = target.transform
    dtype = np.result_type(*(g.dtype for g in grids))
    root = ET.Element(
        "VRTDataset",
        rasterXSize=str(target.width),
        rasterYSize=str(target.height),
        BlockXSize=str(target.block[1]),
        BlockYSize=str(target.block[0]),
    )
    if target.crs:
        ET.SubElement(root, "SRS").text = target.crs
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in t)
    resampled = []
    for band, grid in enumerate(grids, start=1):
        g = grid.transform
        x_off, y_off = (g[2] - t[2]) / t[0], (g[5] - t[5]) / t[4]
        x_size, y_size = grid.width * g[0] / t[0], grid.height * g[4] / t[4]
        if max(abs(x_off), abs(y_off), abs(x_size - target.width), abs(y_size - target.height)) > 0.5:
            raise InputError(
                f"assets {target.key} and {grid.key} of STAC item {item.id} cover different areas "
                f"({_bounds(target)} and {_bounds(grid)}); they must cover the same one to be stacked"
            )
        if (grid.width, grid.height) != (target.width, target.height):
            resampled.append(grid)
        element = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype.name], band=str(band))
        ET.SubElement(element, "Description").text = grid.key
        if grid.nodata is not None:
            ET.SubElement(element, "NoDataValue").text = repr(float(grid.nodata))
        source = ET.SubElement(element, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = grid.path
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(
            source,
            "SourceProperties",
            RasterXSize=str(grid.width),
            RasterYSize=str(grid.height),
            DataType=_GDAL_TYPES[grid.dtype.name],
            BlockXSize=str(grid.block[1]),
            BlockYSize=str(grid.block[0]),
        )
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(grid.width), ySize=str(grid.height))
        ET.SubElement(
            source, "DstRect", xOff=repr(x_off + 0.0), yOff=repr(y_off + 0.0), xSize=repr(x_size), ySize=repr(y_size)
        )
    if resampled:
        coarse = ", ".join(f"{g.key} ({_res(g)})" for g in resampled)
        warnings.warn(
            f"STAC item {item.id}: assets {coarse} are resampled (nearest neighbour) to the {_res(target)} grid "
            f"of {target.key}",
            GigasegWarning,
            stacklevel=2,
        )
    return ET.tostring(root, encoding="unicode")


class StacSource(GeoTiffSource):
    """One STAC item's assets read as the bands of one raster (a VRT held as XML text).

    ``path`` is the item's file (``items.json#<item id>`` for one of several),
    for messages and provenance; the VRT is what each thread opens.
    """

    def __init__(
        self,
        path: str,
        item_id: str,
        hrefs: dict[str, str],
        vrt: str,
        *,
        bands: list[int] | None = None,
        nodata_rule: str = "all-bands",
    ) -> None:
        self.vrt = vrt
        self.item_id = item_id
        self.hrefs = dict(hrefs)
        super().__init__(path, bands=bands, nodata_rule=nodata_rule)

    def _open(self) -> Any:
        import rasterio
        from rasterio.errors import RasterioError

        try:
            return rasterio.open(self.vrt)
        except RasterioError as e:
            raise SourceError(f"cannot read the assets of STAC item {self.item_id}: {gdal_message(e)}") from None

    def _network(self) -> bool:
        """Reads go over the network where any asset lies there (the item's own file does not count)."""
        return any(is_remote(href) for href in self.hrefs.values())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "stac_item": self.item_id, "assets": dict(self.hrefs)}


def open_stac(
    path: str | Path,
    *,
    assets: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    nodata_rule: str = "all-bands",
) -> StacSource:
    """The source of the one STAC item ``path`` names (a file of several: ``items.json#<item id>``)."""
    items = read_items(path)
    if len(items) > 1:
        file = split_ref(path)[0]
        raise InputError(
            f"{file} holds {len(items)} STAC items; segment one as {file}#<item id> (e.g. {file}#{items[0].id}), "
            f"or all of them with a job file (inputs: {{stac: {file}}})"
        )
    item = items[0]
    keys = choose_assets(item, assets, band_names)
    vrt = item_vrt(item, keys)
    return StacSource(
        str(path), item.id, asset_hrefs(item, keys), vrt, bands=list(bands) if bands else None, nodata_rule=nodata_rule
    )


def stac_identity(path: str | Path, assets: Sequence[str] | None = None) -> dict[str, Any]:
    """What makes a STAC input the same input, for resume: the item's JSON and its asset hrefs.

    ``sha256`` hashes the item's own JSON (canonical: sorted keys), so another
    item added to its ItemCollection leaves it the same; ``assets`` are the
    hrefs of ``assets`` (every asset's when ``None``). The assets' bytes are not
    read: a STAC item names new data by new hrefs.
    """
    file, item_id = split_ref(path)
    data = _read_json(file)
    items = read_items(path)
    if len(items) > 1:  # a file of several items, not one scene: the whole file
        return {"stac": file, "sha256": _sha256(data)}
    item = items[0]
    if data.get("type") == "FeatureCollection":
        data = next(f for f in data["features"] if isinstance(f, dict) and f.get("id") == item.id)
    elif data.get("type") != "Feature":  # an item of a catalog: its own JSON, as pystac read it
        data = item.to_dict(include_self_link=False, transform_hrefs=False)
    keys = [k for k in (_find(item, a) for a in assets) if k] if assets else list(item.assets)
    return {"stac_item": item.id, "sha256": _sha256(data), "assets": asset_hrefs(item, keys)}


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stac_scene_inputs(path: str | Path) -> list[tuple[str, str]]:
    """``(input, stem)`` per item of ``path``: ``path#<item id>`` (the file as given) and the item id."""
    file = split_ref(path)[0]
    return [(f"{file}#{item_id}", item_id) for item_id in item_ids(file)]


class _Grid:
    """An asset's raster grid, as read by rasterio."""

    def __init__(self, key: str, path: str, ds: Any) -> None:
        self.key, self.path = key, path
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        self.transform = tuple(ds.transform)[:6]
        self.crs = ds.crs.to_wkt() if ds.crs else None
        self.dtype = np.dtype(ds.dtypes[0])
        self.nodata = ds.nodata
        self.block = tuple(ds.block_shapes[0])


def _res(grid: _Grid) -> str:
    return f"{abs(grid.transform[0]):g} m"


def _bounds(grid: _Grid) -> str:
    t = grid.transform
    x1, y1 = t[2] + grid.width * t[0], t[5] + grid.height * t[4]
    return f"[{min(t[2], x1):g}, {min(t[5], y1):g}, {max(t[2], x1):g}, {max(t[5], y1):g}]"


def _find(item: Any, name: str) -> str | None:
    """The asset key ``name`` is: a key (exactly, then ignoring case), or a band name of one single-band asset."""
    if name in item.assets:
        return name
    lower = name.lower()
    keys = [key for key in item.assets if key.lower() == lower]
    if len(keys) == 1:
        return keys[0]
    keys = [key for key, asset in item.assets.items() if lower in _band_names(asset)]
    return keys[0] if len(keys) == 1 else None


def _band_fields(asset: Any) -> list[dict[str, Any]] | None:
    for field in ("eo:bands", "raster:bands", "bands"):  # STAC 1.0 extensions; 1.1's common "bands"
        value = asset.extra_fields.get(field)
        if isinstance(value, list):
            return [b for b in value if isinstance(b, dict)]
    return None


def _band_names(asset: Any) -> set[str]:
    """The lower-cased names of a single-band asset's band (none for multi-band assets)."""
    found: list[dict[str, Any]] = []
    for field in ("eo:bands", "raster:bands", "bands"):
        value = asset.extra_fields.get(field)
        if isinstance(value, list):
            if len(value) != 1:
                return set()
            found += [b for b in value if isinstance(b, dict)]
    names = {b.get(k) for b in found for k in ("name", "common_name", "eo:common_name")}
    return {n.lower() for n in names if isinstance(n, str)}


def _names(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "(none)"


def _absolute(file: str) -> str:
    return file if is_url(file) else os.path.abspath(file)


def _read_json(file: str) -> Any:
    """The JSON of a local file or a URL (http(s) by pystac, others such as ``s3://`` through fsspec)."""
    try:
        io = _stac_io()
        text = with_retries(lambda: io.read_text(file)) if is_url(file) else io.read_text(file)
    except FileNotFoundError:
        raise SourceError(f"STAC file {file} does not exist") from None
    except Exception as e:  # urllib, fsspec and botocore each raise their own
        raise SourceError(f"cannot read STAC file {file}: {_first_line(e)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{file} is not valid JSON: {e}") from None


def _pystac() -> Any:
    try:
        import pystac
    except ImportError:
        raise InputError("reading STAC items needs pystac: pip install 'gigaseg[cloud]'") from None
    return pystac


def _stac_io() -> Any:
    """pystac's reader, with ``s3://`` (and any other fsspec URL but http(s)) read through fsspec."""
    _pystac()  # installed, or one line saying how
    from pystac.stac_io import DefaultStacIO

    class FsspecStacIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            found = _SCHEME.match(href)
            if found and found.group(1).lower() not in ("http", "https", "file"):
                import fsspec

                with fsspec.open(href, "r", encoding="utf-8") as f:
                    return str(f.read())
            return str(super().read_text_from_href(href))

    return FsspecStacIO()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

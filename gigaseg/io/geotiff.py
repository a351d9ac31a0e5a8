"""GeoTIFF (and any GDAL raster) source: windowed reads, one handle per thread."""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from gigaseg.errors import GigasegWarning, InputError, SourceError  # GigasegWarning: imported from here too
from gigaseg.io.georef import Georef
from gigaseg.io.handles import ThreadLocalHandles
from gigaseg.io.remote import (
    forget,
    gdal_defaults,
    gdal_message,
    gdal_options,
    gdal_path,
    is_local,
    is_remote,
    system_cause,
)
from gigaseg.tiler import Box

# GDAL's block cache defaults to 5% of the machine's memory per process and fills
# up as a scene streams through; only the next tile row reuses a block, so a
# small cache does as well and keeps memory flat in the scene size. A
# GDAL_CACHEMAX in the environment wins. rasterio hands an integer to GDAL as
# bytes (GDAL's own "< 100000 means megabytes" rule applies only to the
# environment variable): 64 would be a 64-byte cache, every read decoding its
# blocks again and every mask read decoding them once more.
CACHE_BYTES = 64 * 2**20

# When a pixel is nodata, from its selected bands' masks (README, "Nodata"):
# "all-bands" is GDAL's dataset mask (the union of the band masks: valid where
# any band is), "any-band" marks it nodata where one band is.
NODATA_RULES = ("all-bands", "any-band")


def _read_options() -> dict[str, Any]:
    return {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": CACHE_BYTES}


def open_dataset(path: str) -> rasterio.DatasetReader:
    """Open ``path`` with rasterio, turning GDAL's failures into one clear error.

    Anything GDAL opens: a local file, a URL (``https://``, ``s3://``: mapped to
    GDAL's ``/vsi`` forms), a ``/vsi`` path (``/vsizip/``, ``/vsicurl/``), a VRT.
    GDAL is always asked first; a local path's failure is then explained
    (missing, a directory). A network failure is retryable (:func:`open_error`).
    """
    try:
        with rasterio.Env(**gdal_options(path)), warnings.catch_warnings():
            # gigaseg says it once, plainly ("... has no CRS"), where it matters: for the mask
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(gdal_path(path))
    except RasterioError as e:
        error = open_error(path, e)
        raise error from error.__cause__


def open_error(path: str, error: Exception) -> SourceError:
    """The one-line error for GDAL failing to open ``path``.

    Over the network it is caused by an ``OSError`` with an errno (the runner
    retries such a block), and GDAL forgets the failure so a retry asks again.
    """
    message = gdal_message(error)
    if is_local(path):
        if not os.path.lexists(path):
            return SourceError(f"input {path} does not exist")
        if os.path.isdir(path):
            return SourceError(f"input {path} is a directory, not a raster file")
        return SourceError(f"cannot read {path} as a raster: {message}")
    missing = any(sign in message for sign in _MISSING)
    if missing:
        if "response code: 404" in message:
            detail = "HTTP 404"
        elif "does not exist in the file system" in message:
            detail = ""  # GDAL's words for any name it cannot find: nothing to add
        else:
            detail = message.rstrip(".")  # the store's: "The specified bucket does not exist"
        text = f"input {path} does not exist" + (f" ({detail})" if detail else "")
    else:
        text = f"input {path}: {message}"
    found = SourceError(text)
    if is_remote(path):
        forget(path)
        found.__cause__ = system_cause(text, missing=missing)
    return found


# How GDAL (and the object stores it relays) say that nothing is there
_MISSING = (
    "does not exist in the file system",
    "No such file or directory",
    "response code: 404",
    "The specified key does not exist",
    "The specified bucket does not exist",
    "The specified blob does not exist",
    "The specified container does not exist",
    "No such object",
    "NoSuchKey",
    "NoSuchBucket",
)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def bands_by_name(wanted: Sequence[str], descriptions: Sequence[str | None], path: str) -> list[int] | None:
    """The bands a model names (its card's ``band_names``), in its order, by the raster's band
    descriptions; None when the raster names no band (its bands are then taken in order)."""
    if not any(descriptions):
        if len(descriptions) == len(wanted):
            warnings.warn(
                f"{path} does not name its bands: they are taken in their order as the model's {', '.join(wanted)}",
                GigasegWarning,
                stacklevel=4,
            )
        return None
    named: dict[str, int] = {}
    for i, d in enumerate(descriptions, start=1):
        key = (d or "").strip().lower()
        if d and key in named and key in (w.strip().lower() for w in wanted):
            raise InputError(
                f"{path} describes bands {named[key]} and {i} both as {d!r}, a band the model takes; "
                "give band numbers with bands",
                parameters=("bands",),
            )
        named.setdefault(key, i)
    missing = [name for name in wanted if name.strip().lower() not in named]
    if missing:
        has = ", ".join(d or f"band{i}" for i, d in enumerate(descriptions, start=1))
        raise InputError(
            f"the model takes {', '.join(wanted)} (its band_names), but the band descriptions of {path} "
            f"are {has}, without {', '.join(missing)}; give band numbers with bands",
            parameters=("bands",),
        )
    return [named[name.strip().lower()] for name in wanted]


class GeoTiffSource(ThreadLocalHandles):
    """A raster read window by window; never the whole scene.

    rasterio handles are neither thread-safe nor picklable, so each thread opens
    its own from the path, and pickling keeps only the path and the reading options.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bands: list[int] | None = None,
        nodata_rule: str = "all-bands",
        band_names: Sequence[str] | None = None,
    ) -> None:
        if nodata_rule not in NODATA_RULES:
            raise InputError(
                f"nodata_rule must be all-bands (GDAL's mask) or any-band, got {nodata_rule!r}",
                parameters=("nodata_rule",),
            )
        self.path = str(path)
        self.nodata_rule = nodata_rule
        with rasterio.Env(**self._gdal_env()), self._open() as ds:
            if bands is None and band_names:
                bands = bands_by_name(band_names, ds.descriptions, self.path)
            self.bands = check_bands(bands, ds.count, self.path)
            self.shape: tuple[int, int] = (ds.height, ds.width)
            self.dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
            self.nodata = ds.nodata
            self.block_shape: tuple[int, int] = tuple(ds.block_shapes[self.bands[0] - 1])
            self.band_names = [ds.descriptions[b - 1] or f"band{b}" for b in self.bands]
            self.georef = _georef(ds)
            self._masks = BandMasks.of(ds, self.bands)
        self._local = threading.local()
        if self.georef.crs_wkt is None:
            warnings.warn(
                f"{self.path} has no CRS: the mask keeps pixel coordinates",
                GigasegWarning,
                stacklevel=2,
            )

    unit = "m"  # lengths such as "5120m" are in CRS units

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def spacing(self) -> tuple[float, float]:
        """Pixel size along (rows, cols) in CRS units."""
        return self.georef.pixel_size

    def describe(self) -> dict[str, Any]:
        return {"bands": self.bands, "nodata_rule": self.nodata_rule}

    def _open(self) -> rasterio.DatasetReader:
        """A new handle on the raster (a subclass may open something else than ``path``: a STAC item's VRT)."""
        return open_dataset(self.path)

    def _network(self) -> bool:
        """Whether reads go over the network: GDAL then runs with :func:`~gigaseg.io.remote.gdal_defaults`,
        and a failed read is retryable. A subclass that opens something else than ``path`` says for it."""
        return is_remote(self.path)

    def _gdal_env(self) -> dict[str, Any]:
        """GDAL's settings for this source's opens and reads (each one the environment sets wins)."""
        return {**_read_options(), **(gdal_defaults() if self._network() else {})}

    def _dataset(self) -> rasterio.DatasetReader:
        ds = getattr(self._local, "dataset", None)
        if ds is None:
            with rasterio.Env(**self._gdal_env()):
                ds = self._local.dataset = self._open()
        return ds

    def close(self) -> None:
        ds = getattr(self._local, "dataset", None)
        if ds is not None:
            ds.close()
            self._local.dataset = None

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of ``box`` as float32 ``(bands, h, w)`` and validity ``(h, w)``.

        A pixel is invalid where the dataset's mask band (an internal or
        ``.msk`` mask, an alpha band) says so; else, by ``nodata_rule``, where
        all selected bands ("all-bands", GDAL's rule) or any of them
        ("any-band") hold their nodata value; and always where any band is not
        finite (NaN, inf), which no network can take. The pixels lie
        pixel-interleaved in memory (an ``(h, w, bands)`` array seen as ``(bands,
        h, w)``), the channels-last layout 2-D networks take without a copy.
        """
        return self._read(box, np.dtype(np.float32))

    def read_native(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`read`, but 8- and 16-bit integer pixels stay in the file's type.

        A uint8 strip is then a quarter of its float32 copy; every value
        converts to float32 exactly later, so nothing is lost.
        """
        small_int = self.dtype.kind in "iu" and self.dtype.itemsize <= 2
        return self._read(box, self.dtype if small_int else np.dtype(np.float32))

    def _read(self, box: Box, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        (r0, c0), (r1, c1) = box.start, box.stop
        window = Window(c0, r0, c1 - c0, r1 - r0)
        ds = self._dataset()
        try:
            with rasterio.Env(**self._gdal_env()):
                data = ds.read(self.bands, window=window, out=_pixel_interleaved(len(self.bands), box.shape, dtype))
                valid = self._valid(ds, window, data)
        except RasterioError as e:
            message = f"cannot read {box} from {self.path}: {gdal_message(e)}"
            if not self._network():
                raise SourceError(message) from None
            self.close()  # the retry opens a fresh handle
            raise SourceError(message) from system_cause(f"{message} (after GDAL's retries)")
        return data, valid

    def _valid(self, ds: rasterio.DatasetReader, window: Window, data: np.ndarray) -> np.ndarray:
        masks, union = self._masks, self.nodata_rule == "all-bands"
        if masks.dataset is not None:
            valid = ds.read_masks(masks.dataset, window=window) != 0
        elif union and masks.unmasked:
            valid = np.ones(data.shape[1:], bool)  # an unmasked band is valid everywhere
        else:
            valid = _combine(self._band_masks(ds, window, data), data.shape[1:], union=union)
        if self.dtype.kind == "f":
            for channel in data:  # one band at a time: no (bands, h, w) temporaries
                valid &= np.isfinite(channel)
        return valid

    def _band_masks(self, ds: rasterio.DatasetReader, window: Window, data: np.ndarray) -> list[np.ndarray]:
        """Each masked band's validity: nodata compared with the pixels read where they hold it exactly."""
        exact = np.can_cast(self.dtype, data.dtype, "safe")
        found = [
            _not_nodata(data[channel], value) if exact else ds.read_masks(band, window=window) != 0
            for channel, band, value in self._masks.nodata
        ]
        return found + [ds.read_masks(band, window=window) != 0 for band in self._masks.own]


@dataclass(frozen=True, slots=True)
class BandMasks:
    """Where a read's validity comes from, decided once from GDAL's mask flags.

    A per-dataset mask (internal or ``.msk`` mask, alpha band) is the validity
    of every band: ``dataset`` is a selected band whose mask it is. Otherwise
    each selected band is unmasked, has a ``nodata`` value (``(channel, band,
    value)``: compared with the pixels already read, so its mask costs no
    second decode), or has a mask band of its ``own`` that is read.
    """

    dataset: int | None = None
    nodata: tuple[tuple[int, int, float], ...] = ()
    own: tuple[int, ...] = ()
    unmasked: bool = False

    @classmethod
    def of(cls, ds: rasterio.DatasetReader, bands: list[int]) -> BandMasks:
        flags = [ds.mask_flag_enums[b - 1] for b in bands]
        per_dataset = [b for b, f in zip(bands, flags, strict=True) if MaskFlags.per_dataset in f]
        if per_dataset:
            return cls(dataset=per_dataset[0])
        dtype = np.dtype(ds.dtypes[bands[0] - 1])
        nodata: list[tuple[int, int, float]] = []
        own: list[int] = []
        for channel, (band, f) in enumerate(zip(bands, flags, strict=True)):
            value = ds.nodatavals[band - 1]
            if f == [MaskFlags.nodata] and value is not None and _holds(dtype, value):
                nodata.append((channel, band, float(value)))
            elif f != [MaskFlags.all_valid]:
                own.append(band)  # GDAL's own test: a mask band, or a nodata value the pixels cannot hold
        return cls(None, tuple(nodata), tuple(own), len(nodata) + len(own) < len(bands))


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether ``value`` is one of ``dtype``'s values (NaN only for floats)."""
    if math.isnan(value):
        return dtype.kind == "f"
    try:
        with np.errstate(over="ignore"):
            return bool(dtype.type(value) == value)
    except (OverflowError, ValueError):
        return False


def _not_nodata(values: np.ndarray, nodata: float) -> np.ndarray:
    if math.isnan(nodata):
        return ~np.isnan(values)
    return values != values.dtype.type(nodata)


def _combine(found: list[np.ndarray], shape: tuple[int, ...], *, union: bool) -> np.ndarray:
    """The bands' validities joined: their union (GDAL's dataset mask) or their intersection."""
    if not found:
        return np.ones(shape, bool)
    valid, join = found[0], np.logical_or if union else np.logical_and
    for band_valid in found[1:]:
        join(valid, band_valid, out=valid)
    return valid


def _pixel_interleaved(bands: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.moveaxis(np.empty((*shape, bands), dtype), -1, 0)


def check_bands(bands: list[int] | None, count: int, path: str) -> list[int]:
    """The 1-based ``bands`` asked for (all when None), each refused unless the source has it."""
    if not bands:
        return list(range(1, count + 1))
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InputError(f"bands {bad} do not exist in {path}, which has bands 1..{count}")
    return list(bands)


def _georef(ds: rasterio.DatasetReader) -> Georef:
    crs = ds.crs.to_wkt() if ds.crs else None
    return Georef(crs, tuple(ds.transform)[:6])

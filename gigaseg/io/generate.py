"""Write generated scenes to GeoTIFF window by window (demo, training, benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from gigaseg.errors import InputError
from gigaseg.synthetic import landcover_scene

NODATA = 0
# uint8 scenes keep reflectance / 12 (the generated reflectance stays below ~3100),
# clipped to 1..255 so that only the border is nodata.
UINT8_SCALE = 12


BAND_NAMES = ("blue", "green", "red", "nir", "swir16", "swir22")  # the synthetic scene's bands, in order


def write_landcover_tiff(
    path: str | Path,
    shape: tuple[int, int],
    *,
    seed: int = 0,
    bands: int = 4,
    pixel_size: float = 10.0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 6000000.0),
    border: int = 0,
    labels_path: str | Path | None = None,
    window: int = 2048,
    dtype: str = "uint16",
) -> Path:
    """A land-cover GeoTIFF of any size without holding it in memory.

    ``border`` pixels on every side are nodata (0), as on the edge of a real tile
    or swath. With ``labels_path`` the true classes go to a second GeoTIFF.
    ``dtype`` is ``uint16`` (reflectance x 10000) or ``uint8`` (reflectance x 10000 / 12).
    """
    if dtype not in ("uint8", "uint16"):
        raise InputError(f"dtype must be uint8 or uint16, got {dtype!r}")
    height, width = shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": dtype,
        "crs": crs,
        "transform": from_origin(*origin, pixel_size, pixel_size),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "DEFLATE",
        "BIGTIFF": "IF_SAFER",
    }
    label_profile = {**profile, "count": 1, "dtype": "uint8", "nodata": 255}
    with rasterio.open(path, "w", **profile) as dst, _maybe_open(labels_path, label_profile) as lab:
        for band in range(bands):  # named as models name theirs (a card's band_names)
            dst.set_band_description(band + 1, BAND_NAMES[band % len(BAND_NAMES)])
        for row in range(0, height, window):
            for col in range(0, width, window):
                h, w = min(window, height - row), min(window, width - col)
                image, labels = landcover_scene((h, w), seed=seed, bands=bands, offset=(row, col))
                if dtype == "uint8":
                    image = np.clip(image // UINT8_SCALE, 1, 255).astype(np.uint8)
                edge = _border_mask((h, w), (row, col), shape, border)
                image[:, edge] = NODATA
                labels[edge] = 255
                dst.write(image, window=Window(col, row, w, h))
                if lab is not None:
                    lab.write(labels, 1, window=Window(col, row, w, h))
    return Path(path)


def _border_mask(shape: tuple[int, int], offset: tuple[int, int], full: tuple[int, int], border: int) -> np.ndarray:
    rows = np.arange(offset[0], offset[0] + shape[0])
    cols = np.arange(offset[1], offset[1] + shape[1])
    row_edge = (rows < border) | (rows >= full[0] - border)
    col_edge = (cols < border) | (cols >= full[1] - border)
    return row_edge[:, None] | col_edge[None, :]


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _maybe_open(path: str | Path | None, profile: dict) -> rasterio.DatasetWriter | _Nothing:
    return rasterio.open(path, "w", **profile) if path else _Nothing()

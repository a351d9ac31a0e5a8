"""Georeferencing as a small value object that crosses room boundaries."""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class Georef:
    """A CRS (as WKT, or None for pixel coordinates) and a GDAL-order affine.

    ``transform`` is ``(a, b, c, d, e, f)`` as in :class:`affine.Affine`:
    ``x = a * col + b * row + c`` and ``y = d * col + e * row + f``.
    """

    crs_wkt: str | None
    transform: Transform = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def is_rectilinear(self) -> bool:
        """True when the grid has no rotation or shear (b == d == 0)."""
        return self.transform[1] == 0 and self.transform[3] == 0

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel size along (rows, cols) in CRS units."""
        a, b, _, d, e, _ = self.transform
        return (float((b * b + e * e) ** 0.5), float((a * a + d * d) ** 0.5))

    @property
    def is_geographic(self) -> bool:
        try:
            return bool(self.crs_wkt) and CRS.from_wkt(self.crs_wkt).is_geographic
        except CRSError:
            return False

    def metres_per_pixel(self, shape: tuple[int, int]) -> tuple[float, float] | None:
        """Pixel size along (rows, cols) in metres, or None when the CRS cannot say.

        Projected CRSs scale by their unit (US feet, ...). Geographic ones (degrees)
        are measured on the WGS 84 ellipsoid at the scene's centre latitude, the
        way a user reading "5120m" means it; pixels far from the centre of a tall
        scene differ by the cosine of their latitude.
        """
        if not self.crs_wkt:
            return self.pixel_size
        try:
            crs = CRS.from_wkt(self.crs_wkt)
            if not crs.is_geographic:
                return tuple(v * crs.linear_units_factor[1] for v in self.pixel_size)  # type: ignore[return-value]
        except CRSError:
            return None
        _, lat = self.affine * (shape[1] / 2, shape[0] / 2)
        rows, cols = self.pixel_size
        return (rows * metres_per_degree_latitude(lat), cols * metres_per_degree_longitude(lat))


def metres_per_degree_latitude(lat: float) -> float:
    """Length of one degree of latitude on WGS 84 (series to the cm)."""
    phi = math.radians(lat)
    return 111132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi) - 0.0023 * math.cos(6 * phi)


def metres_per_degree_longitude(lat: float) -> float:
    """Length of one degree of longitude on WGS 84 at latitude ``lat``."""
    phi = math.radians(lat)
    return 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi) + 0.118 * math.cos(5 * phi)

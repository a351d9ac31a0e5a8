"""Georeferencing as a small value object that crosses room boundaries."""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine

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

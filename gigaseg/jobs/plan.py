"""Planning a scene: lengths in pixels or units, the tile grid and the output blocks."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from gigaseg.errors import InputError
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.io.sources import Source
from gigaseg.jobs.memory import fit_block_side, format_bytes, parse_bytes
from gigaseg.jobs.options import DEFAULT_BLOCK, DEFAULT_CHUNK, Length, SegmentOptions
from gigaseg.models import ModelCard
from gigaseg.tiler import BlockGrid, TileGrid, blend_window, to_pixels
from gigaseg.tiler.regrid import BackRows, Regrid
from gigaseg.tiler.stitch import band_bytes

UNITS_IN_METRES = {"mm": 1e-3, "m": 1.0}


@dataclass(frozen=True)
class Plan:
    """The tiling of one scene: what every block task needs besides the pixels."""

    grid: TileGrid
    blocks: BlockGrid
    blend: str
    merge: str
    tta: bool = False
    regrid: Regrid | None = None  # the model's own grid, when it differs from the scene's

    def band_bytes(self, classes: int) -> int:
        """The stitcher's band for a block of this plan (:func:`gigaseg.tiler.stitch.band_bytes`); on the
        model's grid, the band of the block's model-grid region and the rows held to bring it back."""
        return band_bytes(self.band_depth(), math.prod(self.region_shape()[1:]), classes)

    def stitcher_depth(self) -> int:
        """Rows the stitcher's band holds: a tile and the chunk it releases by; on a model's grid it
        releases every tile row at once (the chunks are made on the way back), so a tile."""
        return self.grid.tile[0] + (0 if self.regrid else self.blocks.chunk[0])

    def band_depth(self) -> int:
        """Rows of class scores held at once: the stitcher's, and on a model's grid the model rows
        kept to bring a chunk back (a chunk's worth there, and the tile row released last)."""
        if self.regrid is None:
            return self.stitcher_depth()
        return self.stitcher_depth() + BackRows.capacity(self.regrid, self.blocks.chunk[0])

    def region_shape(self) -> tuple[int, ...]:
        """The model-grid voxels a block reads, at most (the block itself without a model grid)."""
        if self.regrid is None:
            return self.blocks.block
        scale = zip(self.blocks.block, self.regrid.shape, self.regrid.model_shape, strict=True)
        return tuple(min(m, math.ceil(b * m / n) + 2) for b, n, m in scale)

    def describe(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"model_grid": list(self.regrid.model_shape)} if self.regrid else {}
        if self.grid.placement != "edge":
            extra["placement"] = self.grid.placement
        return {
            **extra,
            "shape": list(self.blocks.shape),
            "tile": list(self.grid.tile),
            "overlap": list(self.grid.overlap),
            "block": list(self.blocks.block),
            "chunk": list(self.blocks.chunk),
            "blend": self.blend,
            "merge": self.merge,
            "tta": self.tta,
        }


def parse_length(value: Length | None, *, pixel_size: float, multiple: int = 1, unit: str = "m") -> int | None:
    """Pixels from ``512`` or ``"512"``, or from lengths such as ``"3840m"`` or ``"80mm"``.

    ``pixel_size`` is in ``unit``: CRS units ("m") for rasters, millimetres for volumes.
    """
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    suffix = next((s for s in ("mm", "m") if text.endswith(s)), "")
    try:
        number = float(text.removesuffix(suffix)) if suffix else int(text)
    except ValueError:
        raise InputError(
            f"a length must be pixels (512), CRS units (3840m) or millimetres (80mm), got {value!r}"
        ) from None
    if not suffix:
        return int(number)
    length = number * UNITS_IN_METRES[suffix] / UNITS_IN_METRES[unit]
    if length == 0:
        return 0
    if length < pixel_size:  # rounding 0.6 px up to a tile or overlap of 1 px is not what was meant
        raise InputError(
            f"{value} is less than one pixel here (pixels of {pixel_size:g} {unit}); "
            "give pixels (512) or a longer length"
        )
    return to_pixels(length, pixel_size, multiple=multiple)


def axis_lengths(
    value: Length | None, spacing: tuple[float, ...], *, unit: str, multiple: int = 1
) -> tuple[int, ...] | None:
    """A length per axis: the same pixels on every axis, or one physical length over each spacing."""
    found = [parse_length(value, pixel_size=s, multiple=multiple, unit=unit) for s in spacing]
    return None if None in found else tuple(int(n) for n in found if n is not None)


def make_plan(
    shape: tuple[int, ...],
    card: ModelCard,
    options: SegmentOptions,
    *,
    pixel_size: float | tuple[float, ...],
    stride: int,
    unit: str = "m",
    flat_axis: int | None = None,
    order: tuple[int, ...] | None = None,
    regrid: Regrid | None = None,
) -> Plan:
    """The tiling of a scene; ``pixel_size`` per axis (or one for all axes).

    ``flat_axis`` makes tiles one pixel thick along that axis with no overlap
    there: slice-wise inference of a 2-D model on a volume. ``order``: the scene
    axis each model axis shows (the card's tile sides are per model axis).
    With ``regrid`` the tiles cover the model's grid and the blocks the scene's.
    """
    ndim = len(shape)
    spacing = (pixel_size,) * ndim if isinstance(pixel_size, int | float) else tuple(pixel_size)
    grid_shape, grid_spacing = shape, spacing
    if regrid is not None:
        grid_shape, grid_spacing = regrid.model_shape, regrid.model_spacing(spacing)
    tile = axis_lengths(options.tile, grid_spacing, unit=unit, multiple=stride) or card_sides(
        card.tile_shape(), ndim, order
    )
    overlap = axis_lengths(options.overlap, grid_spacing, unit=unit)
    overlap = card_sides(card.overlap_shape(), ndim, order) if overlap is None else overlap
    if flat_axis is not None:
        tile = tuple(1 if a == flat_axis else t for a, t in enumerate(tile))
        overlap = tuple(0 if a == flat_axis else o for a, o in enumerate(overlap))
    grid = TileGrid.create(grid_shape, tile, overlap, card.placement or "edge")
    block = options.block or DEFAULT_BLOCK.get(ndim, DEFAULT_BLOCK[3])
    chunk = options.chunk or DEFAULT_CHUNK.get(ndim, DEFAULT_CHUNK[3])
    budget = parse_bytes(options.band_memory)
    # Blocks stream along axis 0, so only their cross-section sets the band's size (on the model's grid,
    # the cross-section of the region a block reads there).
    scale = max((m / n for n, m in zip(shape[1:], grid_shape[1:], strict=True)), default=1.0)
    depth = grid.tile[0] + chunk
    if regrid is not None:  # the band on the model's grid, and the model rows held to bring a chunk back
        depth = grid.tile[0] + BackRows.capacity(regrid, chunk)
    side = fit_block_side(depth=depth, classes=card.num_classes, ndim=ndim, budget=budget, chunk=chunk, limit=block)
    if regrid is not None:
        side = max(chunk, int(side / scale) // chunk * chunk)
    blocks = BlockGrid.create(shape, max_block=(block, *(side,) * (ndim - 1)), chunk=chunk)
    blend = options.blend or card.blend or "gaussian"
    blend_window(blend, (1,))  # validates the name early
    plan = Plan(grid, blocks, blend, merge_of(options, card), options.tta, regrid)
    if regrid is not None and plan.band_bytes(card.num_classes) > budget:
        raise InputError(
            f"the model's grid ({list(regrid.model_shape)} voxels for the scene's {list(shape)}) needs a band of "
            f"{format_bytes(plan.band_bytes(card.num_classes))} for blocks of one chunk ({list(blocks.block)}), "
            f"more than the band memory budget of {format_bytes(budget)}; a smaller chunk or a larger band_memory",
            parameters=("chunk", "band_memory"),
        )
    if plan.band_bytes(card.num_classes) > budget:
        warnings.warn(
            GigasegWarning(
                f"the stitcher's band takes {format_bytes(plan.band_bytes(card.num_classes))} with blocks of one "
                f"chunk ({list(blocks.block)}), more than the band memory budget of {format_bytes(budget)}; "
                "a smaller chunk or a larger band_memory",
                parameters=("chunk", "band_memory"),
            ),
            stacklevel=2,
        )
    return plan


def merge_of(options: SegmentOptions, card: ModelCard) -> str:
    """What is blended: the option, else the model card's, else probabilities."""
    return options.merge or card.merge or "probs"


def card_sides(sides: tuple[int, ...], ndim: int, order: tuple[int, ...] | None) -> tuple[int, ...]:
    """The card's tile sides (per model axis) per scene axis; a 2-D model's side on every axis of a volume."""
    if len(sides) != ndim:
        if len(set(sides)) > 1:
            raise InputError(f"the model card's tile {list(sides)} is per axis of a {len(sides)}-D model; give tile")
        return (sides[0],) * ndim
    if order is None:
        return sides
    scene = [0] * ndim
    for m, a in enumerate(order):
        scene[a] = sides[m]
    return tuple(scene)


def length_spacing(source: Source, options: SegmentOptions) -> tuple[float, ...]:
    """Pixel size per axis in the unit lengths are given in: metres for rasters, mm for volumes.

    A raster in degrees (EPSG:4326) is measured at its centre latitude, with a
    warning when a length in metres is given.
    """
    georef = getattr(source, "georef", None)
    if source.unit != "m" or not isinstance(georef, Georef):
        return tuple(source.spacing)
    metres = georef.metres_per_pixel((source.shape[0], source.shape[1]))
    if metres is None:
        return tuple(source.spacing)
    lengths = [v for v in (options.tile, options.overlap) if isinstance(v, str) and v.strip().lower().endswith("m")]
    if lengths and georef.is_geographic:
        warnings.warn(
            f"{source.path} is in degrees: {', '.join(lengths)} measured at its centre latitude "
            f"({metres[1]:.2f} m x {metres[0]:.2f} m per pixel)",
            GigasegWarning,
            stacklevel=3,
        )
    return metres

"""Pure tiling geometry and arithmetic: grids, blocks, halos, windows, stitching.

No I/O and no Dask here; arrays and small value objects go in and out.
"""

from gigaseg.tiler.grid import (
    BlockGrid,
    Box,
    TileGrid,
    axis_origins,
    halo_overhead,
    read_box,
    to_pixels,
)
from gigaseg.tiler.stitch import Released, Scratch, Stitcher, argmax
from gigaseg.tiler.windows import WINDOWS, blend_window

__all__ = [
    "WINDOWS",
    "BlockGrid",
    "Box",
    "Released",
    "Scratch",
    "Stitcher",
    "TileGrid",
    "argmax",
    "axis_origins",
    "blend_window",
    "halo_overhead",
    "read_box",
    "to_pixels",
]

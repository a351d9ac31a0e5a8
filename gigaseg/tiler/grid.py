"""The global tile grid and the output blocks that group its tiles.

Pure geometry on N-d integer boxes: no I/O, no arrays of pixels. The grid
belongs to the scene, not to a block: along each axis tile origins are
``k * stride`` and the last tile is shifted inward so it ends at the edge.
A scene smaller than one tile gets a single tile that is padded.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gigaseg.errors import InputError

Shape = tuple[int, ...]
Index = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Box:
    """A half-open N-d box ``[start, stop)`` in pixel (voxel) coordinates."""

    start: Shape
    stop: Shape

    def __str__(self) -> str:
        """As messages name it: ``rows 0-511, columns 512-1023`` (inclusive, as GIS tools count)."""
        axes = {2: ("rows", "columns"), 3: ("slices", "rows", "columns")}.get(len(self.start))
        names = axes or tuple(f"axis {i}" for i in range(len(self.start)))
        return ", ".join(f"{n} {a}-{b - 1}" for n, a, b in zip(names, self.start, self.stop, strict=True))

    @property
    def shape(self) -> Shape:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def slices(self, origin: Shape | None = None) -> tuple[slice, ...]:
        """Slices of this box in an array whose element 0 sits at ``origin``."""
        origin = origin or (0,) * len(self.start)
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin, strict=True))

    def intersection(self, other: Box) -> Box | None:
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        if any(b <= a for a, b in zip(start, stop, strict=True)):
            return None
        return Box(start, stop)

    def union(self, other: Box) -> Box:
        start = tuple(min(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(max(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        return Box(start, stop)

    def with_axis(self, axis: int, start: int, stop: int) -> Box:
        """This box with one axis replaced by ``[start, stop)``."""
        starts, stops = list(self.start), list(self.stop)
        starts[axis], stops[axis] = start, stop
        return Box(tuple(starts), tuple(stops))


PLACEMENTS = ("edge", "even")


def axis_origins(size: int, tile: int, stride: int, placement: str = "edge") -> tuple[int, ...]:
    """Tile origins along one axis: ``0, stride, 2 stride, ...`` then ``size - tile`` (``edge``); or
    as many tiles spread evenly from 0 to ``size - tile``, steps of at most ``stride`` (``even``,
    nnU-Net's ``compute_steps_for_sliding_window``).

    Every index in ``[0, size)`` is covered and no tile reaches past the edge,
    except when ``size <= tile``: then one tile at 0 covers the axis and is padded.
    """
    if size <= tile:
        return (0,)
    if placement == "even":
        steps = math.ceil((size - tile) / stride) + 1
        return tuple(round(i * (size - tile) / (steps - 1)) for i in range(steps))
    origins = list(range(0, size - tile, stride))
    origins.append(size - tile)
    return tuple(origins)


def _per_axis(value: int | Shape, ndim: int, name: str) -> Shape:
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim:
        raise InputError(f"{name} has {len(values)} values but the scene has {ndim} axes", parameters=(name,))
    return values


@dataclass(frozen=True, slots=True)
class TileGrid:
    """Tiles of size ``tile`` overlapping by ``overlap`` over a scene of ``shape``."""

    shape: Shape
    tile: Shape
    overlap: Shape
    placement: str = "edge"  # see axis_origins

    @classmethod
    def create(cls, shape: Shape, tile: int | Shape, overlap: int | Shape, placement: str = "edge") -> TileGrid:
        ndim = len(shape)
        return cls(tuple(shape), _per_axis(tile, ndim, "tile"), _per_axis(overlap, ndim, "overlap"), placement)

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.shape):
            raise InputError(f"the scene is empty: shape {self.shape}")
        for t, o in zip(self.tile, self.overlap, strict=True):
            if problem := tiling_problem(t, o):
                raise InputError(problem, parameters=("tile", "overlap"))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stride(self) -> Shape:
        return tuple(t - o for t, o in zip(self.tile, self.overlap, strict=True))

    @property
    def origins(self) -> tuple[tuple[int, ...], ...]:
        """Tile origins per axis."""
        axes = zip(self.shape, self.tile, self.stride, strict=True)
        return tuple(axis_origins(n, t, s, self.placement) for n, t, s in axes)

    @property
    def counts(self) -> Shape:
        return tuple(len(o) for o in self.origins)

    @property
    def size(self) -> int:
        return math.prod(self.counts)

    def tile_box(self, index: Index) -> Box:
        """The tile's footprint in the scene, clipped to the scene."""
        start = tuple(o[i] for o, i in zip(self.origins, index, strict=True))
        stop = tuple(min(a + t, n) for a, t, n in zip(start, self.tile, self.shape, strict=True))
        return Box(start, stop)

    def axis_range(self, axis: int, start: int, stop: int) -> range:
        """Indices of the tiles along ``axis`` that overlap ``[start, stop)``."""
        origins = self.origins[axis]
        first = bisect.bisect_right(origins, start - self.tile[axis])
        last = bisect.bisect_left(origins, stop)
        return range(first, last)

    def tiles_overlapping(self, box: Box) -> tuple[range, ...]:
        """Per-axis index ranges of every tile that overlaps ``box``."""
        return tuple(self.axis_range(ax, a, b) for ax, (a, b) in enumerate(zip(box.start, box.stop, strict=False)))

    def row_box(self, row: int, ranges: tuple[range, ...]) -> Box:
        """The box of tile row ``row`` (axis 0) over the other axes' tile ``ranges``: a strip."""
        first = self.tile_box((row, *(r[0] for r in ranges[1:])))
        last = self.tile_box((row, *(r[-1] for r in ranges[1:])))
        return first.union(last)

    def row_tiles(self, row: int, ranges: tuple[range, ...]) -> list[Index]:
        """Indices of the tiles of row ``row`` over the other axes' ``ranges``, in grid order."""
        return [(row, *rest) for rest in itertools.product(*ranges[1:])]


def tiling_problem(tile: int, overlap: int) -> str | None:
    """The one rule for a tile side and its overlap (grids and model cards): ``tile >= 2 x overlap >= 0``.

    Beyond it a tile's interior would be covered by its neighbours' edges alone. At
    ``tile == 2 x overlap`` tiles step by half a tile (nnU-Net's and MONAI's 0.5).
    """
    if overlap < 0 or tile < 2 * overlap:
        return (
            f"tile must be at least twice overlap, but tile is {tile} "
            f"and overlap is {overlap}; use a smaller overlap or a larger tile"
        )
    return None


def to_pixels(length: float, pixel_size: float, *, multiple: int = 1) -> int:
    """A length in CRS units (metres, millimetres) as a whole number of pixels.

    Rounded to the nearest ``multiple`` (a model's output stride), at least one multiple.
    """
    if pixel_size <= 0:
        raise InputError(f"pixel size must be positive to convert lengths, got {pixel_size}")
    pixels = length / pixel_size
    return max(multiple, round(pixels / multiple) * multiple)


@dataclass(frozen=True, slots=True)
class BlockGrid:
    """Output blocks: a regular grid of chunk-aligned boxes over the scene.

    Blocks are the unit of work, of resume and of writing: each maps to whole
    output chunks, so no two blocks ever write the same chunk.
    """

    shape: Shape
    block: Shape
    chunk: Shape

    @classmethod
    def create(cls, shape: Shape, *, max_block: int | Shape, chunk: int | Shape) -> BlockGrid:
        """Blocks no larger than ``max_block``, of equal size up to chunk rounding."""
        ndim = len(shape)
        chunks = _per_axis(chunk, ndim, "chunk")
        limits = _per_axis(max_block, ndim, "block")
        block = tuple(_balanced_block(n, m, c) for n, m, c in zip(shape, limits, chunks, strict=True))
        # Chunks never larger than the scene, so a tiny scene is one small chunk.
        chunks = tuple(min(c, b) for c, b in zip(chunks, block, strict=True))
        return cls(tuple(shape), block, chunks)

    @property
    def counts(self) -> Shape:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.counts)

    def indices(self) -> Iterator[Index]:
        return itertools.product(*(range(c) for c in self.counts))

    def block_box(self, index: Index) -> Box:
        start = tuple(i * b for i, b in zip(index, self.block, strict=True))
        stop = tuple(min(a + b, n) for a, b, n in zip(start, self.block, self.shape, strict=True))
        return Box(start, stop)


def _balanced_block(size: int, limit: int, chunk: int) -> int:
    if limit < 1 or chunk < 1:
        raise InputError(f"block and chunk must be positive, got {limit} and {chunk}", parameters=("block", "chunk"))
    if size <= chunk:
        return size
    count = math.ceil(size / limit)
    return math.ceil(math.ceil(size / count) / chunk) * chunk


def read_box(grid: TileGrid, block: Box) -> Box:
    """The block plus its halo: the union of every tile that overlaps it."""
    ranges = grid.tiles_overlapping(block)
    start = tuple(grid.origins[ax][r[0]] for ax, r in enumerate(ranges))
    stop = tuple(min(grid.origins[ax][r[-1]] + grid.tile[ax], grid.shape[ax]) for ax, r in enumerate(ranges))
    return Box(start, stop)


def halo_overhead(grid: TileGrid, blocks: BlockGrid, region: Callable[[Box], Box] | None = None) -> float:
    """Tiles computed over all blocks divided by the tiles of the grid (>= 1). ``region``: where a
    block's box lies on the tiles' grid (a model's own grid), when that is not the block's grid."""
    where = region or (lambda box: box)
    boxes = (where(blocks.block_box(i)) for i in blocks.indices())
    computed = sum(math.prod(len(r) for r in grid.tiles_overlapping(box)) for box in boxes)
    return computed / grid.size

"""The stitcher: weighted class scores accumulated over an output region.

It keeps only a band of ``depth`` rows (along axis 0) of the region in memory:
tiles are added in increasing order of their axis-0 origin, and rows that no
later tile can reach are released (labelled, normalised if asked) and dropped.
Memory is then ``depth x region width x classes``, whatever the region's height.

The band is indexed in the scene's axis order, but its memory may run in
another (``order``): the order in which a network's scores arrive. A 3-D
network sees a NIfTI tile in nibabel's ``(i, j, k)`` order, the reverse of
the scene's ``(z, y, x)``; adding its scores into a band laid out the same way
reads and writes both contiguously, where copying each tile's scores back to
``(z, y, x)`` first cost more than the add itself. At release the uint8
labels are copied to the scene's order; probabilities, when asked for, stay
in the band's layout (indexed in the scene's order all the same).

The blending windows are separable and the tile grid is a product of one set
of origins per axis, so the sum of the weights over all tiles is separable
too: ``sum_t w_t(x) = prod_a W_a(x_a)``, with ``W_a`` the 1-D sum of the axis
profile over the axis origins. The stitcher therefore keeps no weight band,
adds nothing per tile but the weighted scores, and divides only when
probabilities are asked for: the labels are the argmax of the weighted sums,
which a positive per-pixel divisor does not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from gigaseg.cpu import zeroed
from gigaseg.tiler.axes import contiguous
from gigaseg.tiler.grid import Box, TileGrid
from gigaseg.tiler.windows import Profile, blend_profiles


@dataclass(frozen=True, slots=True)
class Released:
    """Finished rows of a region: labels, validity, and probabilities when asked for."""

    box: Box
    labels: np.ndarray  # uint8 (uint16 beyond 256 classes), the first class on ties
    valid: np.ndarray  # bool: False where the tile pixels were nodata
    scores: np.ndarray | None = None  # (classes, *box.shape) blended scores, normalised; in the band's layout


@dataclass
class Scratch:
    """Flat buffers that one stitcher after another reuses: one per thread, not one per block.

    A band of hundreds of megabytes freed at the end of a block is soon split
    by the small allocations that follow, and the next block's band then no
    longer fits in it: the heap grows by a second band. Reusing the buffer
    keeps the process at one band, whatever the number of blocks.
    """

    _buffers: dict[str, np.ndarray] = field(default_factory=dict)

    def take(self, name: str, shape: tuple[int, ...], dtype: type, *, zero: bool = True) -> np.ndarray:
        """An array of ``shape`` over the buffer ``name`` (zeroed unless ``zero`` is False)."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            self._buffers.pop(name, None)  # free the old one before taking the new
            self._buffers[name] = zeroed(size, dtype)  # zero, and mapped (see zeroed)
            return self._buffers[name][:size].reshape(shape)
        array = buffer[:size].reshape(shape)
        if zero:
            array.fill(0)
        return array


class Stitcher:
    """Accumulate ``sum_t w_t * scores_t`` over ``region`` for the tiles of ``grid``.

    Tiles are added in a fixed order (the global tile order), so the same plan
    always gives the same bits, whichever block or worker ran it.
    """

    def __init__(
        self,
        grid: TileGrid,
        region: Box,
        classes: int,
        *,
        blend: str | Profile = "gaussian",
        depth: int | None = None,
        scratch: Scratch | None = None,
        order: tuple[int, ...] | None = None,
    ) -> None:
        height = region.shape[0]
        self.region = region
        self.depth = min(depth or height, height)
        self.start = region.start[0]
        self.order = tuple(range(len(region.shape))) if order is None else tuple(order)
        if sorted(self.order) != list(range(len(region.shape))):
            raise ValueError(f"order must be a permutation of the region's axes, got {order}")
        profiles = blend_profiles(blend, grid.tile)
        window = reduce(np.multiply.outer, profiles).astype(np.float32)
        self.window = self._in_scene_order(contiguous(self._in_memory_order(window, lead=0)), lead=0)
        self._sums = [
            weight_sums(origins, profile, size)[a:b]
            for origins, profile, size, a, b in zip(
                grid.origins, profiles, grid.shape, region.start, region.stop, strict=True
            )
        ]
        band = (self.depth, *region.shape[1:])
        self._memory = scratch or Scratch()
        self._scores = self._take("scores", classes, band)
        self._valid = self._memory.take("valid", band, bool)
        self._filled = 0  # rows of the band that may hold something; the rest are zero

    def _take(self, name: str, classes: int, shape: tuple[int, ...], *, zero: bool = True) -> np.ndarray:
        """A ``(classes, *shape)`` float32 scratch array, indexed in scene order, laid out in ``order``."""
        memory = (classes, *(shape[a] for a in self.order))
        return self._in_scene_order(self._memory.take(name, memory, np.float32, zero=zero))

    def _in_scene_order(self, array: np.ndarray, *, lead: int = 1) -> np.ndarray:
        """A view of ``array``, laid out in ``order``, with its axes in the scene's order."""
        return array.transpose(*range(lead), *(lead + self.order.index(a) for a in range(len(self.order))))

    def _to_scene(self, array: np.ndarray, *, lead: int = 1) -> np.ndarray:
        """``array``, laid out in ``order``, copied to the scene's order (no copy when they agree)."""
        return contiguous(self._in_scene_order(array, lead=lead))

    def _in_memory_order(self, array: np.ndarray, *, lead: int = 1) -> np.ndarray:
        """The inverse of :meth:`_in_scene_order`."""
        return array.transpose(*range(lead), *(lead + a for a in self.order))

    def add(self, tile: Box, scores: np.ndarray, valid: np.ndarray) -> None:
        """Add one tile's ``(classes, *tile.shape)`` scores, weighted by the window.

        ``valid`` marks the tile's pixels that hold data (False for nodata).
        ``scores`` may be any view; laid out in the stitcher's ``order`` it is read
        contiguously.
        """
        part = tile.intersection(self.region)
        if part is None:
            return
        if part.start[0] < self.start or part.stop[0] > self.start + self.depth:
            raise ValueError(
                f"tile rows [{part.start[0]}, {part.stop[0]}) fall outside the stitcher's "
                f"band [{self.start}, {self.start + self.depth}): add tiles in grid order"
            )
        dst = part.slices((self.start, *self.region.start[1:]))
        src = part.slices(tile.start)
        # window * scores goes through one reused buffer: no temporary per tile.
        weighted = self._take("weighted", scores.shape[0], part.shape, zero=False)
        np.multiply(scores[(slice(None), *src)], self.window[src], out=weighted)
        self._scores[(slice(None), *dst)] += weighted
        self._valid[dst] = valid[src]
        self._filled = max(self._filled, part.stop[0] - self.start)

    def release(self, until: int, *, scores: bool = False) -> Released:
        """Rows ``[start, until)`` labelled, with normalised ``scores`` if asked; then drop them."""
        n = until - self.start
        if not 0 < n <= self.depth:
            raise ValueError(f"cannot release rows up to {until} from band starting {self.start}")
        rows = slice(self.start - self.region.start[0], until - self.region.start[0])
        band = self._scores[:, :n]
        released = Released(
            self.region.with_axis(0, self.start, until),
            self._to_scene(argmax(self._in_memory_order(band)), lead=0),
            self._valid[:n].copy(),
            band / self.weights(rows) if scores else None,
        )
        filled = self._filled
        for plane in (*self._scores, self._valid):
            _drop_rows(plane, n, filled)
        self._filled = max(0, filled - n)
        self.start = until
        return released

    def weights(self, rows: slice) -> np.ndarray:
        """``sum_t w_t`` over ``rows`` of the region (relative to its start), all other axes whole.

        Indexed in the scene's order and laid out in ``order``, as the band is,
        so dividing the band by it reads both in memory order. The product is
        taken axis by axis in the scene's order whatever the layout: the same
        rounding, so the same bits.
        """
        sums = [self._sums[0][rows], *self._sums[1:]]
        product = sums[0]
        for a in range(1, len(sums)):
            axes = [m for m in self.order if m <= a]  # the memory order of axes 0..a
            memory = np.empty([len(sums[m]) for m in axes], np.float32)
            out = memory.transpose([axes.index(m) for m in range(a + 1)])
            np.multiply.outer(product, sums[a], out=out)
            product = out
        return product


def weight_sums(origins: tuple[int, ...], profile: np.ndarray, size: int) -> np.ndarray:
    """Along one axis of ``size`` pixels: the sum of ``profile`` placed at every origin.

    Tiles are clipped to the axis (a scene smaller than a tile), as their windows are.
    """
    sums = np.zeros(size, np.float64)
    for origin in origins:
        n = min(len(profile), size - origin)
        sums[origin : origin + n] += profile[:n]
    return sums.astype(np.float32)


def argmax(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(axis=0)`` as uint8/uint16 in one contiguous pass per class.

    numpy's axis-0 argmax walks the classes with a stride and is about twice as
    slow. Ties go to the first class, as with numpy. It works on rows of about
    ``CHUNK`` pixels at a time, so its temporaries stay small and in cache.
    """
    dtype = np.uint8 if scores.shape[0] <= 256 else np.uint16
    if scores.ndim == 1:
        return np.asarray(scores.argmax(), dtype)
    labels = np.zeros(scores.shape[1:], dtype)
    rows = max(1, CHUNK // math.prod(labels.shape[1:]))
    for i in range(0, len(labels), rows):
        _argmax_into(labels[i : i + rows], scores[:, i : i + rows])
    return labels


CHUNK = 2**18


def _argmax_into(labels: np.ndarray, scores: np.ndarray) -> None:
    """Without branches: ``labels ^= (labels ^ k) & mask``, the mask all ones where class k is
    greater than the best so far (3 x faster than ``np.copyto(where=)`` on unpredictable scores)."""
    best = scores[0].copy()
    mask = np.empty(labels.shape, labels.dtype)
    change = np.empty(labels.shape, labels.dtype)
    for k in range(1, scores.shape[0]):
        np.greater(scores[k], best, out=mask)
        np.negative(mask, out=mask)  # 1 -> all ones, in unsigned arithmetic
        np.bitwise_xor(labels, k, out=change)
        np.bitwise_and(change, mask, out=change)
        np.bitwise_xor(labels, change, out=labels)
        np.maximum(best, scores[k], out=best)


def _drop_rows(plane: np.ndarray, n: int, filled: int) -> None:
    """Move rows ``n:filled`` of one class's plane to the front and clear the rest, in place.

    Rows from ``filled`` on are zero already, so only what holds data is moved.
    One plane at a time: numpy copies through a temporary when source and
    destination may overlap, and across all classes their bounds always do.
    When the rows are not the plane's outermost axis in memory (a band laid
    out in a network's order), the move goes in slices of that outer axis, so
    each temporary stays small.
    """
    keep = max(0, filled - n)
    outer = max(range(plane.ndim), key=lambda a: abs(plane.strides[a]))
    if outer == 0 or keep == 0:
        plane[:keep] = plane[n : n + keep]
    else:
        for i in range(0, plane.shape[outer], OUTER_SLICES):
            piece = plane[(slice(None),) * outer + (slice(i, i + OUTER_SLICES),)]
            piece[:keep] = piece[n : n + keep]
    plane[keep : max(filled, keep)] = 0


OUTER_SLICES = 8

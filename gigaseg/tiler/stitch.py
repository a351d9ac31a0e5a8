"""The stitcher: weighted class scores accumulated over an output region.

It keeps only a band of ``depth`` rows (along axis 0) of the region in memory:
tiles are added in increasing order of their axis-0 origin, and rows that no
later tile can reach are released, normalised, and dropped. Memory is then
``depth x region width x classes``, whatever the region's height.
"""

from __future__ import annotations

import numpy as np

from gigaseg.tiler.grid import Box


class Stitcher:
    """Accumulate ``sum_t w_t * scores_t`` and ``sum_t w_t`` over ``region``.

    Tiles are added in a fixed order (the global tile order), so the same plan
    always gives the same bits, whichever block or worker ran it.
    """

    def __init__(self, region: Box, classes: int, *, depth: int | None = None) -> None:
        height = region.shape[0]
        self.region = region
        self.depth = min(depth or height, height)
        self.start = region.start[0]
        band = (self.depth, *region.shape[1:])
        self._scores = np.zeros((classes, *band), np.float32)
        self._weights = np.zeros(band, np.float32)
        self._valid = np.zeros(band, bool)
        self._buffer = np.empty(0, np.float32)
        self._filled = 0  # rows of the band that may hold something; the rest are zero

    def add(self, tile: Box, scores: np.ndarray, weights: np.ndarray, valid: np.ndarray) -> None:
        """Add one tile's ``(classes, *tile.shape)`` scores with its blending weights.

        ``valid`` marks the tile's pixels that hold data (False for nodata).
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
        w = weights[src]
        # w * scores goes through one reused buffer: no temporary per tile.
        scratch = self._scratch(scores.shape[0], part.shape)
        np.multiply(scores[(slice(None), *src)], w, out=scratch)
        self._scores[(slice(None), *dst)] += scratch
        self._weights[dst] += w
        self._valid[dst] = valid[src]
        self._filled = max(self._filled, part.stop[0] - self.start)

    def _scratch(self, classes: int, shape: tuple[int, ...]) -> np.ndarray:
        size = classes * int(np.prod(shape))
        if self._buffer.size < size:
            self._buffer = np.empty(size, np.float32)
        return self._buffer[:size].reshape(classes, *shape)

    def release(self, until: int) -> tuple[Box, np.ndarray, np.ndarray]:
        """Rows ``[start, until)`` as (box, normalised scores, validity); then drop them."""
        n = until - self.start
        if not 0 < n <= self.depth:
            raise ValueError(f"cannot release rows up to {until} from band starting {self.start}")
        box = self.region.with_axis(0, self.start, until)
        scores = self._scores[:, :n] / self._weights[:n]
        valid = self._valid[:n].copy()
        filled = self._filled
        _drop_rows(self._scores, n, filled, axis=1)
        _drop_rows(self._weights, n, filled, axis=0)
        _drop_rows(self._valid, n, filled, axis=0)
        self._filled = max(0, filled - n)
        self.start = until
        return box, scores, valid


def _drop_rows(band: np.ndarray, n: int, filled: int, *, axis: int) -> None:
    """Move rows ``n:filled`` along ``axis`` to the front and clear the rest, in place.

    Rows from ``filled`` on are zero already, so only what holds data is moved.
    """
    rows = np.moveaxis(band, axis, 0)
    keep = max(0, filled - n)
    rows[:keep] = rows[n : n + keep]  # numpy buffers the copy when the two overlap
    rows[keep : max(filled, keep)] = 0

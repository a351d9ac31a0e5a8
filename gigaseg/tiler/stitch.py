"""The stitcher: weighted class scores accumulated over an output region, on the model's device.

The band of scores is a torch tensor on the device the network runs on: on a
GPU, a tile's scores never leave it. Each tile is weighted and added there in
global tile order, finished rows are argmaxed there, and only what the store
holds crosses to the host: labels (uint8/uint16, nodata already set) and,
when asked for, probabilities already cast to float16 or quantised to uint8.
Per pixel that is 1-2 bytes instead of the ``4 x classes`` bytes of float32
scores, so the class count no longer sets the host's load.

It keeps only a band of ``depth`` rows (along axis 0) of the region: tiles
are added in increasing order of their axis-0 origin, and rows that no later
tile can reach are released and their place reused. The band is a ring: row
``y`` of the region lives at ``(y - region start) % depth``, so releasing
rows moves nothing; a tile or a release that crosses the ring's end is done
in two pieces. Memory is ``depth x region width x classes``, whatever the
region's height.

The band is indexed in the scene's axis order, but its memory may run in
another (``order``): the order in which a network's scores arrive. A 3-D
network sees a NIfTI tile in nibabel's ``(i, j, k)`` order, the reverse of the
scene's ``(z, y, x)``; adding its scores into a band laid out the same way
reads and writes both contiguously.

The blending windows are separable and the tile grid is a product of one set
of origins per axis, so the sum of the weights over all tiles is separable
too: ``sum_t w_t(x) = prod_a W_a(x_a)``, with ``W_a`` the 1-D sum of the axis
profile over the axis origins. The stitcher therefore keeps no weight band
and divides only when probabilities are asked for: the labels are the argmax
of the weighted sums, which a positive per-pixel divisor does not change.

Arithmetic per element is one float32 multiply (score x window) and one
float32 add, in global tile order, on any device: no fused multiply-add,
whose rounding could depend on where a pixel falls in a vector loop. So the
same plan gives the same bits whichever block or worker ran it, and on the
CPU the same bits as a plain numpy accumulation (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np
import torch

from gigaseg.cpu import zeroed
from gigaseg.tiler.axes import contiguous
from gigaseg.tiler.grid import Box, TileGrid
from gigaseg.tiler.windows import Profile, blend_profiles

# What released probabilities are cast to on the device, by the store's dtype name.
PROBABILITY_DTYPES = ("float32", "float16", "uint8")


def band_bytes(depth: int, width: int, classes: int) -> int:
    """Memory of a stitcher's band: ``depth`` rows of ``width`` pixels, float32 per class and a validity byte."""
    return depth * width * (4 * classes + 1)


@dataclass(frozen=True, slots=True)
class Released:
    """Finished rows of a region, on the host, as the store holds them.

    From a GPU the arrays are pinned host memory that an asynchronous copy is
    still filling: call :meth:`wait` before reading them (the writer thread
    does), so the model's thread never waits for the copy.
    """

    box: Box
    labels: np.ndarray  # the store's label dtype; ``nodata`` where the pixels were nodata
    scores: np.ndarray | None = None  # (classes, *box.shape) probabilities, in the asked dtype; 0 on nodata
    ready: Any = None  # a CUDA event recorded after the copies

    def wait(self) -> Released:
        if self.ready is not None:
            self.ready.synchronize()
        return self


@dataclass
class Scratch:
    """Buffers that one stitcher after another reuses: one set per thread, not one per block.

    On the CPU a band of hundreds of megabytes freed at the end of a block is
    soon split by the small allocations that follow, and the next block's band
    then no longer fits in it: the heap grows by a second band. Reusing the
    buffer keeps the process at one band, whatever the number of blocks. CPU
    buffers are mapped in one go (:func:`gigaseg.cpu.zeroed`); device buffers
    come from torch's caching allocator.
    """

    _buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def take(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, zero: bool = True
    ) -> torch.Tensor:
        """A tensor of ``shape`` over the buffer ``name`` (zeroed unless ``zero`` is False)."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != device:
            self._buffers.pop(name, None)  # free the old one before taking the new
            self._buffers[name] = buffer = _zeros(size, dtype, device)
            return buffer[:size].view(shape)
        tensor = buffer[:size].view(shape)
        if zero:
            tensor.zero_()
        return tensor


def _zeros(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.from_numpy(zeroed(size, torch.empty(0, dtype=dtype).numpy().dtype))
    return torch.zeros(size, dtype=dtype, device=device)


class Stitcher:
    """Accumulate ``sum_t w_t * scores_t`` over ``region`` for the tiles of ``grid``, on ``device``.

    Tiles are added in a fixed order (the global tile order), so the same plan
    always gives the same bits, whichever block or worker ran it. Released
    labels are ``label_dtype`` with ``nodata`` where no tile pixel held data.

    What is blended: with ``softmax`` the tiles' scores are logits, turned into
    probabilities tile by tile before they are weighted (``merge="probs"``);
    with ``logits`` the blended values are logits (``merge="logits"``), turned
    into probabilities (a softmax of the blended logits) only when
    probabilities are released; with neither, the scores are probabilities.
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
        device: str | torch.device = "cpu",
        nodata: int | None = None,
        label_dtype: np.dtype | type | None = None,
        logits: bool = False,
        softmax: bool = False,
    ) -> None:
        height = region.shape[0]
        self.region = region
        self.classes = classes
        self.depth = min(depth or height, height)
        self.start = region.start[0]
        self.device = torch.device(device)
        self.order = tuple(range(len(region.shape))) if order is None else tuple(order)
        if sorted(self.order) != list(range(len(region.shape))):
            raise ValueError(f"order must be a permutation of the region's axes, got {order}")
        self.label_dtype = np.dtype(label_dtype or (np.uint8 if classes <= 255 else np.uint16))
        self.nodata = np.iinfo(self.label_dtype).max if nodata is None else nodata
        self.logits = logits
        self.softmax = softmax
        # Weight whole batches and add evenly spaced tiles in strided calls (the device path);
        # on the CPU each tile goes through softmax, weighting and add in cached pieces instead.
        self.whole_batches = self.device.type != "cpu"
        self._tile, self._stride = grid.tile, grid.stride
        profiles = blend_profiles(blend, grid.tile)
        window = reduce(np.multiply.outer, profiles).astype(np.float32)
        self.window = self._in_scene_order(self._to_device(window.transpose(self.order)), lead=0)
        self._sums = [
            torch.from_numpy(weight_sums(origins, profile, size)[a:b]).to(self.device)
            for origins, profile, size, a, b in zip(
                grid.origins, profiles, grid.shape, region.start, region.stop, strict=True
            )
        ]
        band = (self.depth, *region.shape[1:])
        memory = scratch or Scratch()
        shape = (classes, *(band[a] for a in self.order))
        self._scores = self._in_scene_order(memory.take("scores", shape, torch.float32, self.device))
        self._valid = memory.take("valid", band, torch.bool, self.device, zero=False)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _in_scene_order(self, tensor: torch.Tensor, *, lead: int = 1) -> torch.Tensor:
        """A view of ``tensor``, laid out in ``order``, with its axes in the scene's order."""
        return tensor.permute(*range(lead), *(lead + self.order.index(a) for a in range(len(self.order))))

    def _in_memory_order(self, tensor: torch.Tensor, *, lead: int = 1) -> torch.Tensor:
        """The inverse of :meth:`_in_scene_order`."""
        return tensor.permute(*range(lead), *(lead + a for a in self.order))

    def _ring(self, start: int, stop: int) -> list[tuple[slice, slice]]:
        """Rows ``[start, stop)`` of the scene as (band rows, offsets from ``start``): one or two pieces."""
        first = (start - self.region.start[0]) % self.depth
        n = stop - start
        if first + n <= self.depth:
            return [(slice(first, first + n), slice(0, n))]
        head = self.depth - first
        return [(slice(first, self.depth), slice(0, head)), (slice(0, n - head), slice(head, n))]

    def add(self, tile: Box, scores: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray) -> None:
        """Add one tile's ``(classes, *tile.shape)`` scores and validity (the caller's arrays are left as they are)."""
        scores = torch.as_tensor(scores, device=self.device)[None]
        self.add_batch([tile], scores.clone())
        self.set_valid(tile, torch.as_tensor(valid, device=self.device))

    def set_valid(self, box: Box, valid: torch.Tensor) -> None:
        """Which pixels of ``box`` hold data (``valid`` is ``box.shape``); the part inside the region counts.

        A pixel's validity is its source pixel's, whichever tile covers it, so the
        pipeline sets it once per tile row, from the row's strip, after adding the
        row's tiles (the band then holds those rows).
        """
        part = box.intersection(self.region)
        if part is None:
            return
        src = part.slices(box.start)
        rest = self._rest(box, src)
        for rows, inside in self._band_rows(box, src):
            self._valid[(rows, *rest)] = valid[inside]

    def add_batch(self, tiles: list[Box], scores: torch.Tensor) -> None:
        """Add tiles in the given order: ``scores`` ``(n, classes, *tile)``.

        ``scores`` may be any strided view; the caller gives up its values (they
        may be weighted in place). Only the part of each tile inside ``tiles[i]``
        counts (a scene smaller than one tile pads its tile).

        On a GPU the whole batch is turned into probabilities and weighted in
        one pass each, then added tile by tile. On the CPU, where memory
        bandwidth is what the stitcher spends, each tile goes through softmax,
        weighting and add in pieces of about :data:`PIECE_BYTES`, so the
        intermediate values never leave the cache (2-3 x faster at 4-32 classes).
        """
        if self.device.type == "cpu" and not self.whole_batches:
            for tile, tile_scores in zip(tiles, scores, strict=False):
                self._add_tile(tile, tile_scores, weigh=True)
            return
        if self.softmax:
            scores = torch.softmax(scores, 1, dtype=torch.float32)
        scores = scores.mul_(self.window[tuple(slice(0, n) for n in scores.shape[2:])])
        start = 0
        for stop in range(1, len(tiles) + 1):  # runs of tiles of one tile row
            if stop == len(tiles) or tiles[stop].start[0] != tiles[start].start[0]:
                self._add_row(tiles[start:stop], scores[start:stop])
                start = stop

    def _add_row(self, tiles: list[Box], scores: torch.Tensor) -> None:
        """Add weighted tiles of one tile row, in order: the evenly spaced ones in a few strided calls.

        Kernel launches and Python, not arithmetic, bound tile-by-tile adds on a
        GPU. Evenly spaced full tiles (stride apart, inside the region) are added
        as strided windows of the band: first every tile's middle and right
        overlap, then every tile's left overlap but the first's. A pixel in the
        overlap of tiles ``j`` and ``j + 1`` still gets ``j``'s value, then
        ``j + 1``'s: the same operations in the same order as adding tile by
        tile, so the same bits. Tiles at the ends that are not evenly spaced (the
        grid's last, shifted inward) or stick out of the region go one by one,
        the left ones before, the right ones after.
        """
        first, last = self._even_run(tiles)
        for i in range(first):
            self._add_tile(tiles[i], scores[i], weigh=False)
        if last - first >= 2:
            self._add_even(tiles[first], scores[first:last])
        else:
            for i in range(first, last):
                self._add_tile(tiles[i], scores[i], weigh=False)
        for i in range(last, len(tiles)):
            self._add_tile(tiles[i], scores[i], weigh=False)

    def _even_run(self, tiles: list[Box]) -> tuple[int, int]:
        """``[first, last)``: the longest run of full tiles, ``stride`` apart along the last axis, inside the region."""
        if len(self.region.shape) != 2:
            return 0, 0
        stride, (lo, hi) = self._stride[1], (self.region.start[1], self.region.stop[1])
        fits = [t.shape[1] == self._tile[1] and lo <= t.start[1] and t.stop[1] <= hi for t in tiles]
        best, start = (0, 0), 0
        for i in range(len(tiles) + 1):
            ends = i == len(tiles) or not fits[i] or (i > start and tiles[i].start[1] - tiles[i - 1].start[1] != stride)
            if ends:
                best = max(best, (start, i), key=lambda r: r[1] - r[0])
                start = i + 1 if i < len(tiles) and not fits[i] else i
        return best

    def _add_even(self, tile: Box, scores: torch.Tensor) -> None:
        """Add ``scores`` (n weighted tiles of one row, ``stride`` apart from ``tile`` on) as strided windows."""
        size, stride = self._tile[1], self._stride[1]
        overlap, n = size - stride, len(scores)
        part = tile.with_axis(1, tile.start[1], tile.stop[1] + (n - 1) * stride).intersection(self.region)
        assert part is not None, "an even run lies inside the region"
        src = part.slices((tile.start[0], part.start[1]))
        column = tile.start[1] - self.region.start[1]  # the first tile's column in the band
        for rows, inside in self._band_rows(tile, (src[0], slice(0, size))):
            band, values = self._scores[:, rows], scores[:, :, inside[0]]
            # the first tile's left overlap: its left neighbour (if any) is in already
            band[:, :, column : column + overlap] += values[0, :, :, :overlap]
            # every tile's middle and right overlap, then the left overlaps of all but the first
            for lo, hi, skip in ((overlap, size, 0), (0, overlap, 1)):
                if hi > lo:
                    start = column + skip * stride + lo
                    window = band[:, :, start : start + (n - skip - 1) * stride + hi - lo].unfold(2, hi - lo, stride)
                    window += values[skip:, :, :, lo:hi].permute(1, 2, 0, 3)

    def _add_tile(self, tile: Box, scores: torch.Tensor, *, weigh: bool) -> None:
        part = tile.intersection(self.region)
        if part is None:
            return
        if part.start[0] < self.start or part.stop[0] > self.start + self.depth:
            raise ValueError(
                f"tile rows [{part.start[0]}, {part.stop[0]}) fall outside the stitcher's "
                f"band [{self.start}, {self.start + self.depth}): add tiles in grid order"
            )
        src = part.slices(tile.start)  # the part in the tile's coordinates
        if not weigh:
            self._accumulate(tile, src, scores, (0,) * len(src))
            return
        # Pieces are cut from the whole tile, never from the part inside this region: the
        # values of a pixel must not depend on which block adds it (vectorised and scalar
        # exp differ in the last bit, and a piece's shape decides which a pixel gets).
        window = self.window[tuple(slice(0, n) for n in scores.shape[1:])]
        axis = max(range(len(src)), key=lambda a: scores.stride(a + 1))  # slowest in memory
        length = max(1, PIECE_BYTES // (scores.element_size() * scores[0].numel() // scores.shape[axis + 1]))
        for start in range(0, scores.shape[axis + 1], length):
            piece = _replace(tuple(slice(None) for _ in src), axis, slice(start, start + length))
            lo, hi = max(start, src[axis].start), min(start + length, src[axis].stop)
            if lo < hi:
                weighted = self._weigh(scores[(slice(None), *piece)], window[piece])
                origin = tuple(start if a == axis else 0 for a in range(len(src)))
                self._accumulate(tile, _replace(src, axis, slice(lo, hi)), weighted, origin)

    def _band_rows(self, tile: Box, src: tuple[slice, ...]) -> list[tuple[slice, tuple[slice, ...]]]:
        """The ring rows of the part ``src`` (tile coordinates), with the part's slices of each piece."""
        a, b = tile.start[0] + src[0].start, tile.start[0] + src[0].stop
        return [
            (rows, (slice(src[0].start + off.start, src[0].start + off.stop), *src[1:]))
            for rows, off in self._ring(a, b)
        ]

    def _rest(self, tile: Box, src: tuple[slice, ...]) -> tuple[slice, ...]:
        """The band's slices of the part ``src`` along every axis but the first."""
        return tuple(
            slice(t + s.start - r, t + s.stop - r)
            for t, s, r in zip(tile.start[1:], src[1:], self.region.start[1:], strict=True)
        )

    def _accumulate(self, tile: Box, src: tuple[slice, ...], values: torch.Tensor, origin: tuple[int, ...]) -> None:
        """``band[part] += values[part]`` for the part ``src`` of the tile; ``values[0]`` sits at ``origin``."""
        rest = self._rest(tile, src)
        for rows, inside in self._band_rows(tile, src):
            local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(inside, origin, strict=True))
            self._scores[(slice(None), rows, *rest)] += values[(slice(None), *local)]

    def _weigh(self, scores: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """``window x scores`` of one piece (probabilities first, when the scores are logits)."""
        if self.softmax:
            return softmax(scores).mul_(window)
        return torch.mul(scores, window)

    def release(self, until: int, *, scores: bool | str = False) -> Released:
        """Rows ``[start, until)`` labelled (and their probabilities if ``scores``); then reuse their place.

        ``scores`` is False, True (float32) or one of :data:`PROBABILITY_DTYPES`.
        """
        n = until - self.start
        if not 0 < n <= self.depth:
            raise ValueError(f"cannot release rows up to {until} from band starting {self.start}")
        kind = "float32" if scores is True else scores or None
        if kind is not None and kind not in PROBABILITY_DTYPES:
            raise ValueError(f"probabilities must be one of {PROBABILITY_DTYPES}, got {kind!r}")
        label_parts, probability_parts = [], []
        for rows, offsets in self._ring(self.start, until):
            band, valid = self._scores[:, rows], self._valid[rows]
            label_parts.append(self._labels(band, valid))
            if kind:
                absolute = slice(self.start + offsets.start, self.start + offsets.stop)
                probability_parts.append(self._probabilities(band, valid, absolute, kind))
            band.zero_()
        box = self.region.with_axis(0, self.start, until)
        self.start = until
        return to_host(box, _join(label_parts, 0), _join(probability_parts, 1) if kind else None)

    def release_probabilities(
        self, until: int, out: tuple[torch.Tensor, torch.Tensor] | None = None, *, softmax: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[start, until)`` as float32 probabilities ``(classes, rows, ...)`` and their validity, in
        the scene's axis order on the device, for what comes after the blend (:mod:`gigaseg.tiler.regrid`);
        then reuse their place. ``out``: where to write them (float32 and bool tensors of those shapes).
        Blended logits are soft-maxed unless ``softmax`` is False (the caller does it later)."""
        n = until - self.start
        if not 0 < n <= self.depth:
            raise ValueError(f"cannot release rows up to {until} from band starting {self.start}")
        shape = (n, *self.region.shape[1:])
        if out is None:
            out = (
                torch.empty((self.classes, *shape), dtype=torch.float32, device=self.device),
                torch.empty(shape, dtype=torch.bool, device=self.device),
            )
        probabilities, valid = out
        for rows, offsets in self._ring(self.start, until):
            band = self._scores[:, rows]
            first = self.start + offsets.start - self.region.start[0]
            weights = self.weights(slice(first, first + offsets.stop - offsets.start))
            torch.div(band, weights, out=probabilities[:, offsets])  # straight into the rows given out
            if self.logits and softmax:
                probabilities[:, offsets] = torch.softmax(probabilities[:, offsets], dim=0)
            valid[offsets] = self._valid[rows]  # the band's rows are reused
            band.zero_()
        self.start = until
        return probabilities, valid

    def _labels(self, band: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | np.ndarray:
        """The argmax of the band's rows, ``nodata`` where invalid, in the store's dtype and scene order."""
        labels = argmax(self._in_memory_order(band))
        if isinstance(labels, torch.Tensor):  # on the device
            labels = labels.masked_fill_(~self._in_memory_order(valid, lead=0), self.nodata)
            dtype = torch.uint8 if self.label_dtype == np.uint8 else torch.uint16
            return self._in_scene_order(labels.to(dtype), lead=0).contiguous()
        # the CPU kernel: numpy labels, laid out in memory order
        labels = contiguous(labels.transpose([self.order.index(a) for a in range(len(self.order))]))
        labels = labels.astype(self.label_dtype, copy=False)  # 255 and 256 classes: uint16, nodata 65535
        labels[~valid.numpy()] = self.nodata
        return labels

    def _probabilities(
        self, band: torch.Tensor, valid: torch.Tensor, rows: slice, kind: str
    ) -> torch.Tensor | np.ndarray:
        p = band / self.weights(slice(rows.start - self.region.start[0], rows.stop - self.region.start[0]))
        if self.logits:
            p = torch.softmax(p, dim=0)
        return cast_probabilities(p, valid, kind)

    def weights(self, rows: slice) -> torch.Tensor:
        """``sum_t w_t`` over ``rows`` of the region (relative to its start), all other axes whole.

        Multiplied axis by axis in the scene's order: the same rounding whatever
        the band's layout, so the same bits.
        """
        sums = [self._sums[0][rows], *self._sums[1:]]
        ndim = len(sums)
        product = sums[0].view(-1, *(1,) * (ndim - 1))
        for a in range(1, ndim):
            product = product * sums[a].view(*(1,) * a, -1, *(1,) * (ndim - 1 - a))
        return product


PIECE_BYTES = 2**21  # scores of one piece on the CPU: a few of these fit the cache


def _replace(slices: tuple[slice, ...], axis: int, value: slice) -> tuple[slice, ...]:
    return (*slices[:axis], value, *slices[axis + 1 :])


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (0) of float32 scores: a new tensor, computed where the values lie.

    Scores laid out with the classes outermost (planar, or a 3-D network's order
    seen in the scene's) are taken in their memory order, so torch reads and
    writes them contiguously and the result keeps their layout (a softmax of a
    transposed view would copy it to the scene's order first). Scores laid out
    classes-last (a 2-D network's channels-last output): torch's softmax is
    fast along a contiguous axis of 16 or more values; with fewer classes the
    piece is made planar first (cheap for a piece that sits in the cache).
    """
    if scores.ndim == 1:
        return torch.softmax(scores, 0)
    if scores.stride(0) == 1:
        if scores.shape[0] >= 16:
            dims = (*range(1, scores.ndim), 0)
            return torch.softmax(scores.permute(*dims), -1).permute(scores.ndim - 1, *range(scores.ndim - 1))
        return torch.softmax(scores.contiguous(), 0)
    strides = scores.stride()
    axes = sorted(range(1, scores.ndim), key=lambda a: -strides[a])  # the memory order
    inverse = [axes.index(a) + 1 for a in range(1, scores.ndim)]
    return torch.softmax(scores.permute(0, *axes), 0).permute(0, *inverse)


def cast_probabilities(p: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor | np.ndarray:
    """Probabilities as the store keeps them (``kind``, one of :data:`PROBABILITY_DTYPES`), 0 where invalid;
    numpy on the CPU. ``p`` is changed in place."""
    p.masked_fill_(~valid, 0)
    if kind == "uint8":
        p = torch.round(p.mul_(255)).to(torch.uint8)  # round half to even, as numpy's rint
    elif kind == "float16":
        p = p.to(torch.float16)
    return p.numpy() if p.device.type == "cpu" else p


def finish(
    box: Box,
    pieces: Iterable[tuple[Box, torch.Tensor, torch.Tensor]],
    *,
    nodata: int,
    label_dtype: np.dtype,
    kind: str | None,
) -> Released:
    """Labels (and probabilities as ``kind``) of ``box``, from its rows' scene-ordered probabilities
    ``(classes, rows, ...)`` and validity, a few rows (a piece) at a time."""
    label_parts, probability_parts = [], []
    for _, p, valid in pieces:
        labels = argmax(p)
        if isinstance(labels, torch.Tensor):
            dtype = torch.uint8 if label_dtype == np.uint8 else torch.uint16
            labels = labels.masked_fill_(~valid, nodata).to(dtype)
        else:
            labels = labels.astype(label_dtype, copy=False)
            labels[~valid.numpy()] = nodata
        label_parts.append(labels)
        if kind:
            probability_parts.append(cast_probabilities(p, valid, kind))
    return to_host(box, _join(label_parts, 0), _join(probability_parts, 1) if kind else None)


def to_host(box: Box, labels: Any, probabilities: Any) -> Released:
    """Released rows: as they are on the CPU; from a device, copies into pinned memory still under way."""
    if isinstance(labels, np.ndarray):
        return Released(box, labels, probabilities)
    host_labels = _pinned_copy(labels)
    host_scores = None if probabilities is None else _pinned_copy(probabilities)
    ready = torch.cuda.Event()
    ready.record()
    return Released(box, host_labels.numpy(), None if host_scores is None else host_scores.numpy(), ready=ready)


def _join(parts: list[Any], axis: int) -> Any:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=axis) if isinstance(parts[0], np.ndarray) else torch.cat(parts, dim=axis)


def _pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """An asynchronous copy of a device tensor into pinned host memory (ready after a sync)."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def weight_sums(origins: tuple[int, ...], profile: np.ndarray, size: int) -> np.ndarray:
    """Along one axis of ``size`` pixels: the sum of ``profile`` placed at every origin.

    Tiles are clipped to the axis (a scene smaller than a tile), as their windows are.
    """
    sums = np.zeros(size, np.float64)
    for origin in origins:
        n = min(len(profile), size - origin)
        sums[origin : origin + n] += profile[:n]
    return sums.astype(np.float32)


def argmax(scores: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``scores.argmax(axis=0)``, ties to the first class; on a GPU a tensor, on the CPU numpy.

    On a GPU this is torch's own argmax (int64, on the device). On the CPU
    torch's argmax over the class axis takes 50 x longer than one contiguous
    pass per class in numpy (318 vs 6 ms for 4 x 512 x 8192), so the CPU gets
    that pass: uint8 (uint16 beyond 256 classes) labels laid out as ``scores``
    is in memory.
    """
    if isinstance(scores, torch.Tensor):
        if scores.device.type != "cpu":
            return scores.argmax(dim=0)
        scores = scores.numpy()
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

"""Cutting tiles: a block's tile rows staged as strips on the model's device, and batches of tiles cut from them.

A strip holds the pixels of one row of tiles; a tile is a view of its strip;
a batch is a reused ``(batch, channels, *tile)`` buffer that tiles are copied
into, mirror-padded to the tile size and normalised. Geometry and device
buffers only: reading is the caller's (:mod:`gigaseg.jobs.strips`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gigaseg.tiler.grid import Box
from gigaseg.tiler.pad import pad_to

Normalize = Callable[[torch.Tensor], Any]  # normalises a batch in place


@dataclass(slots=True)
class Strip:
    """Pixels and validity of a box on the model's device (raw pixels, the file's type).

    ``data`` is ``(channels, *box.shape)``, laid out as read (pixel-interleaved for
    2-D rasters); ``all_valid`` is known on the host, so no device sync asks it.
    """

    box: Box
    data: torch.Tensor
    valid: torch.Tensor
    all_valid: bool
    event: Any = None  # a CUDA event recorded after the copies, on the reader's stream

    @classmethod
    def stage(cls, box: Box, data: np.ndarray, valid: np.ndarray, device: torch.device) -> Strip:
        """Move pixels read on the host to ``device``: pinned memory and an asynchronous copy
        on the reader thread's own CUDA stream, so copies overlap the model; on the CPU, no copy."""
        all_valid = bool(valid.all())
        if device.type == "cpu":
            return cls(box, torch.from_numpy(data), torch.from_numpy(valid), all_valid)
        stream = _reader_stream(device)
        with torch.cuda.stream(stream):
            data_on, valid_on = (torch.from_numpy(a).pin_memory().to(device, non_blocking=True) for a in (data, valid))
            event = torch.cuda.Event()
            event.record(stream)
        return cls(box, data_on, valid_on, all_valid, event)

    def ready(self) -> Strip:
        """Make the model's stream wait for this strip's copies (without blocking the host)."""
        if self.event is not None:
            current = torch.cuda.current_stream(self.data.device)
            current.wait_event(self.event)
            for tensor in (self.data, self.valid):
                tensor.record_stream(current)  # not reused by the reader's stream before the model is done
            self.event = None
        return self

    def rows(self, start: int, stop: int) -> Strip:
        """Rows ``[start, stop)`` (scene coordinates) of this strip: views."""
        a, b = start - self.box.start[0], stop - self.box.start[0]
        box = self.box.with_axis(0, start, stop)
        return Strip(box, self.data[:, a:b], self.valid[a:b], self.all_valid)

    @classmethod
    def join(cls, parts: list[Strip]) -> Strip:
        """Strips that follow each other along axis 0, as one (joined on their device, layout kept)."""
        if len(parts) == 1:
            return parts[0]
        # Joined as (rows, ..., channels) so a pixel-interleaved layout stays pixel-interleaved.
        data = torch.cat([p.data.movedim(0, -1) for p in parts]).movedim(-1, 0)
        valid = torch.cat([p.valid for p in parts])
        return cls(parts[0].box.union(parts[-1].box), data, valid, all(p.all_valid for p in parts))


_STREAMS = threading.local()


def _reader_stream(device: torch.device) -> torch.cuda.Stream:
    if getattr(_STREAMS, "stream", None) is None:
        _STREAMS.stream = torch.cuda.Stream(device)
    return _STREAMS.stream


@dataclass(slots=True)
class Tile:
    """One tile on its way through the pipeline: its box and its row's strip on the device."""

    row: int
    box: Box
    strip: Strip
    ends_row: bool

    @property
    def pixels(self) -> torch.Tensor:
        return self.strip.data[(slice(None), *self.box.slices(self.strip.box.start))]

    @property
    def valid(self) -> torch.Tensor:
        return self.strip.valid[self.box.slices(self.strip.box.start)]


class TileBatch:
    """One reused ``(batch, channels, *tile)`` float32 input buffer on the model's device.

    With ``channels_last`` the memory is ``(batch, *tile, channels)``, which a 2-D
    network in channels-last format takes without a copy. ``valid`` holds the
    tiles' validity, padded as the pixels are, when some of them hold nodata.
    """

    def __init__(
        self,
        size: int,
        channels: int,
        tile: tuple[int, ...],
        *,
        channels_last: bool,
        device: torch.device,
        stride: tuple[int, ...] | None = None,
    ) -> None:
        self.x = torch.zeros((size, channels, *tile), dtype=torch.float32, device=device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.valid = torch.ones((size, *tile), dtype=torch.bool, device=device)
        self.shape = tuple(tile)
        # With the grid's stride, evenly spaced 2-D tiles of one strip are copied in one call
        # (on a GPU, launches and Python bound a tile-by-tile copy); else tile by tile.
        self.stride = stride[-1] if stride is not None and len(tile) == 2 else None

    def fill(self, tiles: list[Tile], normalize: Normalize) -> torch.Tensor:
        """Copy tiles in (converting to float32), mirror-padded to the tile size, and normalise them.

        Nodata pixels are set to 0 after normalisation, so they enter the model
        as the band mean and NaN or inf never does. Unused slots are zero.
        Normalising here rather than per strip repeats it on the overlaps
        (about 30 % more pixels) but needs no float32 strip.
        """
        n = len(tiles)
        for start, stop in self._runs(tiles):
            if stop - start == 1 or self.stride is None:  # runs are longer only with a stride
                self.x[start].copy_(pad_to(tiles[start].pixels, self.shape))
                continue
            strip, first = tiles[start].strip, tiles[start].box
            column = first.start[1] - strip.box.start[1]
            rows = first.slices(strip.box.start)[0]
            width = (stop - start - 1) * self.stride + self.shape[1]
            windows = strip.data[:, rows, column : column + width].unfold(2, self.shape[1], self.stride)
            self.x[start:stop].copy_(windows.permute(2, 0, 1, 3))
        normalize(self.x[:n])  # in place
        if not all(t.strip.all_valid for t in tiles):  # known on the host: no copies when all valid
            for i, tile in enumerate(tiles):
                self.valid[i].copy_(pad_to(tile.valid, self.shape))
            self.x[:n].masked_fill_(~self.valid[:n, None], 0)
        if n < len(self.x):
            self.x[n:] = 0
        return self.x

    def _runs(self, tiles: list[Tile]) -> Iterator[tuple[int, int]]:
        """``[start, stop)`` of tiles copied together: full tiles of one strip, ``stride`` apart."""
        start = 0
        for i in range(1, len(tiles) + 1):
            if i == len(tiles) or not self._follows(tiles[i - 1], tiles[i]):
                yield start, i
                start = i

    def _follows(self, a: Tile, b: Tile) -> bool:
        if self.stride is None or a.strip is not b.strip:
            return False
        full = a.box.shape == self.shape and b.box.shape == self.shape
        return full and b.box.start[1] - a.box.start[1] == self.stride

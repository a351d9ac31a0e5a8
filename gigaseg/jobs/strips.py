"""Reading a block's tile rows ("strips") ahead of the model, staged on its device.

A block is processed as a stream of tile rows; strip ``r`` holds the pixels of
every tile of row ``r``. Consecutive strips overlap (by the tile overlap) and
rarely line up with the file's internal blocks: 256-row strips at stride 224
over 512-row TIFF blocks would decode each block row two or three times. So
strips are cut from *units*: runs of whole internal block rows (at least
:data:`UNIT_ROWS` rows), each read and decoded once, in reader threads (GDAL
releases the GIL; one dataset handle per thread), staged on the model's
device, and kept only while a coming strip still needs them. A strip is then a
view of one unit, or the rows of two joined on the device.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from gigaseg.tiler import Box

T = TypeVar("T")
Read = Callable[[Box], tuple[np.ndarray, np.ndarray]]
UNIT_ROWS = 256  # a unit is whole block rows and at least this many rows (striped files have 1-row blocks)


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
            on_device = [torch.from_numpy(a).pin_memory().to(device, non_blocking=True) for a in (data, valid)]
            event = torch.cuda.Event()
            event.record(stream)
        return cls(box, *on_device, all_valid, event)

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


def read_strips(
    read: Read, boxes: list[Box], *, block_rows: int, device: torch.device, workers: int
) -> Iterator[Strip]:
    """The strips ``boxes`` (consecutive along axis 0, same extent on the others) in order.

    They are cut from units of whole rows of the file's ``block_rows``-row blocks,
    each read once by one of ``workers`` threads, ahead of need.
    """
    unit = block_rows * math.ceil(UNIT_ROWS / block_rows)
    first, last = boxes[0].start[0], boxes[-1].stop[0]
    units = [
        boxes[0].with_axis(0, max(first, k * unit), min(last, (k + 1) * unit))
        for k in range(first // unit, (last - 1) // unit + 1)
    ]
    loaded = prefetch(lambda box: Strip.stage(box, *read(box), device), units, workers=workers)
    held: collections.deque[Strip] = collections.deque()
    for box in boxes:
        while not held or held[-1].box.stop[0] < box.stop[0]:
            held.append(next(loaded).ready())
        while held[0].box.stop[0] <= box.start[0]:
            held.popleft()  # no coming strip needs it
        parts = [u.rows(max(box.start[0], u.box.start[0]), min(box.stop[0], u.box.stop[0])) for u in held]
        yield Strip.join([p for p in parts if p.box.shape[0] > 0])


def prefetch(fn: Callable[[T], Any], items: Iterable[T], *, workers: int = 1) -> Iterator[Any]:
    """``fn(item)`` for each item, in order, with up to ``workers`` of the next ones computed in threads."""
    items = list(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="gigaseg-read") as pool:
        pending: collections.deque[Future[Any]] = collections.deque(pool.submit(fn, i) for i in items[:workers])
        for item in items[workers:]:
            result = pending.popleft().result()
            pending.append(pool.submit(fn, item))
            yield result
        while pending:
            yield pending.popleft().result()

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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from gigaseg.tiler import Box
from gigaseg.tiler.tiles import Strip

T = TypeVar("T")
Read = Callable[[Box], tuple[np.ndarray, np.ndarray]]
UNIT_ROWS = 256  # a unit is whole block rows and at least this many rows (striped files have 1-row blocks)


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

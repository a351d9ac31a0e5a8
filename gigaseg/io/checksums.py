"""Chunk checksums: what each block wrote, recorded so that damage is noticed.

When a chunk of ``mask`` (or ``probabilities``) is written, the CRC-32 of its
decoded values (C order, the part inside the array) goes into the matching
element of ``mask_crc32`` (``probabilities_crc32``). Those arrays have one
element per chunk of the array they check, and each element is its own zarr
chunk, so the task that writes a chunk also writes its checksum and no other
task touches either. A recorded value is ``crc + 2**32``; 0 means "never
written" (a block that has not run).

Checking decoded values rather than the stored bytes costs one decompression
per chunk, as an export does, and keeps a checksum valid whatever codec wrote
it. A truncated chunk fails to decode; a deleted one reads as the fill value
and no longer matches (chunks that were all nodata are never stored: they read
back as written).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from gigaseg.errors import DamagedStoreError
from gigaseg.io import zarrs
from gigaseg.tiler import Box

RECORDED = 1 << 32
SUFFIX = "_crc32"


def crc32(values: np.ndarray) -> int:
    """CRC-32 of an array's values in C order (zlib's, about 4 GB/s here)."""
    return zlib.crc32(np.ascontiguousarray(values).data)


def chunk_ranges(box: Box, chunks: tuple[int, ...]) -> tuple[range, ...]:
    """Indices of the chunks a box touches, per axis."""
    return tuple(range(a // c, -(-b // c)) for a, b, c in zip(box.start, box.stop, chunks, strict=True))


def chunk_box(index: tuple[int, ...], chunks: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    """The part of chunk ``index`` inside an array of ``shape``."""
    start = tuple(i * c for i, c in zip(index, chunks, strict=True))
    return Box(start, tuple(min(a + c, n) for a, c, n in zip(start, chunks, shape, strict=True)))


def checksum_grid(box: Box, values: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    """Recorded checksums (``crc + 2**32``) of every chunk of ``values``, the pixels of ``box``.

    ``box`` starts on a chunk corner; leading axes of ``values`` beyond the
    spatial ones (classes) belong to each chunk whole.
    """
    ranges = chunk_ranges(box, chunks)
    grid = np.zeros([len(r) for r in ranges], np.uint64)
    lead = (slice(None),) * (values.ndim - len(chunks))
    for local, index in zip(np.ndindex(grid.shape), itertools.product(*ranges), strict=True):
        part = chunk_box(index, chunks, box.stop)
        grid[local] = crc32(values[(*lead, *part.slices(box.start))]) + RECORDED
    return grid


def read_per_chunk(array: zarr.Array) -> tuple[np.ndarray, np.ndarray]:
    """A small bookkeeping array whole (``blocks_done``, ``block_counts``), and which of its
    chunks cannot be decoded: those read as 0, so their blocks count as not done."""
    grid = tuple(math.ceil(n / c) for n, c in zip(array.shape, array.chunks, strict=True))
    try:
        return zarrs.read(array), np.zeros(grid, bool)
    except Exception:  # noqa: BLE001 - a damaged chunk; found one by one below
        values, bad = np.zeros(array.shape, array.dtype), np.zeros(grid, bool)
        for index in np.ndindex(grid):
            cells = chunk_box(index, tuple(array.chunks), tuple(array.shape)).slices()
            try:
                values[cells] = zarrs.read(array, cells)
            except Exception:  # noqa: BLE001
                bad[index] = True
        return values, bad


def chunk_counts(array: zarr.Array) -> tuple[int, ...]:
    """Chunks per spatial axis of a mask or probabilities array."""
    shape, chunks = spatial(array)
    return tuple(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))


def spatial(array: zarr.Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and chunk shape of an array's spatial axes (probabilities lead with classes)."""
    lead = 1 if zarrs.attrs(array).get("_ARRAY_DIMENSIONS", [""])[0] == "class" else 0
    return tuple(array.shape[lead:]), tuple(array.chunks[lead:])


def write_checked(array: zarr.Array, checksums: zarr.Array | None, box: Box, values: np.ndarray) -> None:
    """Write whole chunks of ``box`` into ``array``, then their checksums."""
    lead = (slice(None),) * (array.ndim - len(box.start))
    array[(*lead, *box.slices())] = values
    if checksums is not None:
        _, chunks = spatial(array)
        grid = checksum_grid(box, np.asarray(values, array.dtype), chunks)
        checksums[tuple(slice(r.start, r.stop) for r in chunk_ranges(box, chunks))] = grid


def read_checked(
    array: zarr.Array, checksums: zarr.Array | None, box: Box, name: str, *, written: np.ndarray | None = None
) -> np.ndarray:
    """Read ``box`` of ``array``, checking every chunk it touches whose checksum is recorded.

    Raises :class:`DamagedStoreError` naming the first chunk that cannot be
    decoded, does not match, or lacks the checksum it must have (``written``,
    per chunk of the whole array: see :func:`verify_array`).
    """
    shape, chunks = spatial(array)
    wanted, box = box, aligned(box, chunks, shape)
    lead = (slice(None),) * (array.ndim - len(shape))
    ranges = chunk_ranges(box, chunks)
    indices = list(itertools.product(*ranges))
    try:
        values = zarrs.read(array, (*lead, *box.slices()))
    except Exception:  # noqa: BLE001 - a chunk that cannot be decoded; found below
        for index, actual in _each_chunk(array, indices, shape, chunks):
            if isinstance(actual, str):
                raise DamagedStoreError(_damaged(array, Damage(name, index, actual)), parameters=("resume",)) from None
        raise
    inner = (*lead, *wanted.slices(box.start))
    if checksums is None:
        return values[inner]
    cells = tuple(slice(r.start, r.stop) for r in ranges)
    recorded = zarrs.read(checksums, cells)
    if written is not None and (missing := (recorded == 0) & written[cells]).any():
        first = tuple(r[i] for r, i in zip(ranges, np.argwhere(missing)[0], strict=True))
        raise DamagedStoreError(_damaged(array, Damage(name, first, "its checksum is missing")), parameters=("resume",))
    bad = (recorded != 0) & (recorded != checksum_grid(box, values, chunks))
    if bad.any():
        first = tuple(r[i] for r, i in zip(ranges, np.argwhere(bad)[0], strict=True))
        raise DamagedStoreError(
            _damaged(array, Damage(name, first, "checksum differs (damaged, or deleted)")), parameters=("resume",)
        )
    return values[inner]


def aligned(box: Box, chunks: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    """The smallest box of whole chunks (cut at the array's edge) that holds ``box``."""
    start = tuple(a // c * c for a, c in zip(box.start, chunks, strict=True))
    stop = tuple(min(-(-b // c) * c, n) for b, c, n in zip(box.stop, chunks, shape, strict=True))
    return Box(start, stop)


def _damaged(array: zarr.Array, damage: Damage) -> str:
    where = getattr(array.store, "root", array.store)
    return (
        f"{where}: {damage.line()}; gigaseg verify lists every damaged chunk, and segmenting again "
        "with resume writes them again"
    )


@dataclass
class Damage:
    """One chunk that does not hold what was written."""

    array: str
    chunk: tuple[int, ...]
    reason: str

    def line(self) -> str:
        return f"{self.array} chunk {list(self.chunk)}: {self.reason}"


@dataclass
class Verification:
    """What :func:`verify_array` found over an array's recorded chunks."""

    checked: int = 0
    unrecorded: int = 0
    damaged: list[Damage] = field(default_factory=list)

    def __iadd__(self, other: Verification) -> Verification:
        self.checked += other.checked
        self.unrecorded += other.unrecorded
        self.damaged += other.damaged
        return self


def verify_array(
    array: zarr.Array, checksums: zarr.Array, name: str, *, written: np.ndarray | None = None
) -> Verification:
    """Decode every chunk that has a recorded checksum and compare, one row of chunks at a time.

    ``written`` marks the chunks that must have a checksum (their blocks are
    done): one missing there is damage too.
    """
    shape, chunks = spatial(array)
    recorded = zarrs.read(checksums)
    missing = recorded == 0
    found = Verification(unrecorded=int(missing.sum()))
    if written is not None:
        for index in zip(*np.nonzero(missing & written), strict=True):
            found.damaged.append(Damage(name, tuple(map(int, index)), "its checksum is missing"))
    for row in range(recorded.shape[0]):
        indices = [(row, *rest) for rest in itertools.product(*map(range, recorded.shape[1:]))]
        indices = [i for i in indices if recorded[i]]
        if not indices:
            continue
        found.checked += len(indices)
        for index, actual in _row_checksums(array, row, indices, shape, chunks):
            if isinstance(actual, str):
                found.damaged.append(Damage(name, index, actual))
            elif actual != recorded[index]:
                found.damaged.append(Damage(name, index, "checksum differs (damaged, or deleted)"))
    return found


def _row_checksums(
    array: zarr.Array, row: int, indices: list[tuple[int, ...]], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], Any]]:
    """Each chunk's recorded-form checksum, or why it cannot be read.

    The row is read in one call (zarr fetches and decodes its chunks
    concurrently); only when that fails is it read chunk by chunk to find the culprit.
    """
    start = (row * chunks[0], *(0,) * (len(shape) - 1))
    box = Box(start, (min((row + 1) * chunks[0], shape[0]), *shape[1:]))
    lead = (slice(None),) * (array.ndim - len(shape))
    try:
        values = zarrs.read(array, (*lead, *box.slices()))
    except Exception:  # noqa: BLE001 - any decoding failure; found chunk by chunk below
        yield from _each_chunk(array, indices, shape, chunks)
        return
    grid = checksum_grid(box, values, chunks)
    for index in indices:
        yield index, int(grid[(0, *index[1:])])


def _each_chunk(
    array: zarr.Array, indices: list[tuple[int, ...]], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], Any]]:
    lead = (slice(None),) * (array.ndim - len(shape))
    for index in indices:
        box = chunk_box(index, chunks, shape)
        try:
            values = zarrs.read(array, (*lead, *box.slices()))
        except Exception as e:  # noqa: BLE001 - a chunk that cannot be decoded is the finding
            yield index, f"cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
            continue
        yield index, crc32(values) + RECORDED

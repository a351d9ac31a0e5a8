"""The block engine: one output block as a stream of tile rows.

Per block: reader threads read tile-row strips (raw pixels, in the file's
own type) while the model runs on the row before; the stitcher keeps a band of
rows a little taller than one tile, and finished chunk rows are written and
dropped. Memory is bounded by block width, never by scene size.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from gigaseg.cpu import keep_less_freed_memory
from gigaseg.errors import ModelError
from gigaseg.faults import maybe_fail_write
from gigaseg.io.location import is_remote
from gigaseg.io.sources import ReadsNative, Source
from gigaseg.io.store import MaskStore, store_path
from gigaseg.jobs.plan import Plan
from gigaseg.jobs.strips import prefetch, read_strips
from gigaseg.jobs.volume import Normalize
from gigaseg.models import Scorer
from gigaseg.tiler import Box, Released, Scratch, Stitcher
from gigaseg.tiler.regrid import BACK_ROWS, BackRows
from gigaseg.tiler.stitch import finish
from gigaseg.tiler.tiles import Strip, Tile, TileBatch

T = TypeVar("T")


class BlockRunner:
    """Everything one process needs to run blocks of one scene into one store.

    The data path, per block: reader threads read tile-row strips (raw pixels,
    in the file's own type) and stage them on the model's device; batches of
    tiles are cut, padded, normalised and masked there; the network's scores
    go straight into the stitcher's band there; only finished labels (and
    asked-for probabilities, already cast) come back to the host, where a
    writer thread counts and writes them while the device goes on.
    """

    def __init__(
        self,
        plan: Plan,
        source: Source,
        predictor: Scorer,
        store: MaskStore,
        *,
        normalize: Normalize | None = None,
        readers: int | None = None,
    ) -> None:
        self.plan = plan
        self.source = source
        self.predictor = predictor
        self.store = store
        self.normalize = normalize or predictor.card.normalizer()
        self.classes = predictor.card.num_classes
        self.device = predictor.device
        self.readers = readers or default_readers(self.device)
        # Writers: one on a CPU (its cores run the model); on a GPU the host's cores are
        # free, and a band of labels every few milliseconds needs several to compress. On
        # object storage a write mostly waits on the network: several overlap their requests.
        self.writers = 1 if self.device.type == "cpu" and not is_remote(store_path(store)) else 4
        # A fixed batch shape for the whole scene (kernels are chosen by batch size),
        # but never more tiles than the scene has: a 9-tile scene runs one batch of 9.
        self.batch_size = min(predictor.batch_size, plan.grid.size)
        self.channels_last = len(plan.grid.tile) == 2  # how 2-D networks take their input
        self.on_write: Callable[[Box], None] | None = None  # told of every box written (refinement)
        self.on_rows: Callable[[int], None] | None = None  # told the pixels each tile row finishes (progress)
        # Seconds of the model's thread: waiting on readers and writers, and its own host time
        # building batches, launching the network, adding and releasing (on a GPU the device
        # works meanwhile, so these sum to the wall time only where the host is the bottleneck).
        if plan.regrid is not None and self.device.type == "cpu":
            keep_less_freed_memory()  # the way back's buffers would split the heap (gigaseg.cpu)
        self.timings = dict.fromkeys(("read", "write", "fill", "model", "add", "release"), 0.0)
        self._local = threading.local()  # blocks may run in several threads of one process
        self._written = threading.Lock()

    def _scratch(self) -> Scratch:
        """This thread's stitcher buffers, kept from block to block (see :class:`Scratch`)."""
        if not hasattr(self._local, "scratch"):
            self._local.scratch = Scratch()
        return self._local.scratch

    def run(self, index: tuple[int, ...]) -> np.ndarray:
        """Compute block ``index``, write its chunks, then record it done.

        Returns the block's pixel count per class, nodata last.
        """
        grid, out_box, regrid = self.plan.grid, self.plan.blocks.block_box(index), self.plan.regrid
        box = out_box if regrid is None else regrid.to_model(out_box)  # the region blended, on the tiles' grid
        back = None if regrid is None else self._back_rows(out_box, box)
        ranges = grid.tiles_overlapping(box)
        chunk = self.plan.blocks.chunk[0]
        stitcher = Stitcher(
            grid,
            box,
            self.classes,
            blend=self.plan.blend,
            depth=self.plan.stitcher_depth(),
            scratch=self._scratch(),
            order=self.predictor.scores_order,  # the band laid out as the scores come
            device=self.device,
            nodata=self.store.nodata,
            label_dtype=self.store.mask.dtype,
            logits=self.plan.merge == "logits",
            softmax=self.predictor.defers_softmax,  # tiles come as logits, made probabilities in the band
        )
        keep = probability_dtype(self.store)
        origins, last_row = grid.origins[0], ranges[0][-1]
        strips = self._strips(ranges)
        counted, per_row = box.start[0], box.size // box.shape[0]  # progress: rows whose tiles are all in
        finite = torch.ones((), dtype=torch.bool, device=self.device)  # all scores so far: one flag, no sync
        with WriteBehind(self._write, self.classes, pending=self.writers) as writer:
            for run, scores in self._scored(self._tiles(ranges, strips), finite):
                tile = run[-1]
                with self._timed("add"):
                    stitcher.add_batch([t.box for t in run], scores)
                    if tile.ends_row:  # the row's tiles are in: its pixels' validity, once per row
                        stitcher.set_valid(tile.strip.box, tile.strip.valid)
                if not tile.ends_row:
                    continue
                if back is not None:  # on the model's grid: blended rows go back to the scene's, then out
                    until = box.stop[0] if tile.row == last_row else origins[tile.row + 1]
                    if until > stitcher.start:
                        self._back(back, stitcher, until, writer, keep)
                    continue
                final = box.stop[0] if tile.row == last_row else min(max(origins[tile.row + 1], counted), box.stop[0])
                if self.on_rows and final > counted:  # per tile row, not per chunk-aligned write
                    self.on_rows((final - counted) * per_row)
                counted = final
                until = box.stop[0] if tile.row == last_row else origins[tile.row + 1] // chunk * chunk
                if until > stitcher.start:
                    self._wait_room(writer)
                    with self._timed("release"):
                        writer.submit(stitcher.release(until, scores=keep or False))
        if not bool(finite):  # one synchronisation per block; the block stays undone
            raise ModelError(
                f"the model gave non-finite scores (NaN or inf) in block {list(index)}: some pixel it was fed "
                "is outside what it takes, such as a band's own nodata value counted as valid "
                "(nodata_rule any-band counts a pixel as nodata where any band holds its nodata value)",
                parameters=("nodata_rule",),
            )
        with self.store.io_errors():
            maybe_fail_write(index)
        self.store.mark_done(index, writer.counts)
        return writer.counts

    def _wait_room(self, writer: WriteBehind) -> None:
        started = time.perf_counter()
        writer.room()  # at most `writers` released bands in memory
        self.timings["write"] += time.perf_counter() - started

    def _back(self, back: BackRows, stitcher: Stitcher, until: int, writer: WriteBehind, keep: str | None) -> None:
        """Model-grid rows up to ``until`` into ``back``; each chunk of scene rows they complete, out."""
        while stitcher.start < until:  # a few rows at a time: the rows held for the way back stay few
            rows = min(until, stitcher.start + BACK_ROWS) - stitcher.start
            with self._timed("release"):
                stitcher.release_probabilities(stitcher.start + rows, out=back.room(rows), softmax=not back.logits)
                back.add(rows)
            self._finish_back(back, writer, keep)

    def _back_rows(self, out_box: Box, region: Box) -> BackRows:
        """The window that brings a block's blended model rows back to its scene rows."""
        regrid, chunk = self.plan.regrid, self.plan.blocks.chunk[0]
        assert regrid is not None
        capacity = BackRows.capacity(regrid, chunk)
        return BackRows(
            regrid,
            out_box,
            region,
            chunk,
            classes=self.classes,
            capacity=capacity,
            device=self.device,
            scratch=self._scratch(),
            logits=self.plan.merge == "logits",
        )

    def _finish_back(self, back: BackRows, writer: WriteBehind, keep: str | None) -> None:
        for box, pieces in back.ready():
            self._wait_room(writer)
            with self._timed("read"):
                valid = self._scene_valid(box)
            with self._timed("release"):
                own = ((piece, p, valid[piece.slices(box.start)]) for piece, p, _ in pieces)
                released = finish(box, own, nodata=self.store.nodata, label_dtype=self.store.mask.dtype, kind=keep)
            writer.submit(released)
            if self.on_rows:
                self.on_rows(box.size)

    def _scene_valid(self, box: Box) -> torch.Tensor:
        """Which voxels of ``box`` hold data in the scene itself: on a model's grid, nodata stays nodata
        and every valid voxel gets a label, whatever the resampling made of their neighbours."""
        scene = getattr(self.source, "source", self.source)  # the scene under OnModelGrid
        return torch.from_numpy(scene.read(box)[1]).to(self.device)

    def _strips(self, ranges: tuple[range, ...]) -> Iterator[Strip]:
        """The block's tile rows as strips staged on the model's device, read ahead in threads.

        Small integer pixels stay in their own type (a uint8 strip is a quarter
        of a float32 one) and are converted and normalised on the device, batch
        by batch (:class:`TileBatch`). For 2-D models the pixels are laid out
        channels-last, as the network takes them. Rasters with internal blocks
        are read by whole block rows, each decoded once (:mod:`gigaseg.jobs.strips`).
        """
        grid = self.plan.grid
        boxes = [grid.row_box(row, ranges) for row in ranges[0]]
        # With one reader, GDAL's block cache already decodes each block once (the next
        # strip finds the blocks it shares with this one cached); with several, each
        # thread's handle has its own blocks, so strips are cut from shared units.
        block_rows = getattr(self.source, "block_shape", (None,))[0]
        if block_rows and self.readers > 1:
            return read_strips(self._read, boxes, block_rows=block_rows, device=self.device, workers=self.readers)
        staged = prefetch(lambda box: Strip.stage(box, *self._read(box), self.device), boxes, workers=self.readers)
        return (strip.ready() for strip in staged)

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of ``box`` from the source (in a reader thread), as the model takes them."""
        read = self.source.read_native if isinstance(self.source, ReadsNative) else self.source.read
        data, valid = read(box)
        if self.channels_last:
            data = np.moveaxis(np.ascontiguousarray(np.moveaxis(data, 0, -1)), -1, 0)
        return data, valid

    def _tiles(self, ranges: tuple[range, ...], strips: Iterator[Strip]) -> Iterator[Tile]:
        """Every tile of the block in global tile order, with its row's strip."""
        grid = self.plan.grid
        for row in ranges[0]:
            started = time.perf_counter()
            strip = next(strips)
            self.timings["read"] += time.perf_counter() - started
            indices = grid.row_tiles(row, ranges)
            for n, tile_index in enumerate(indices):
                tile_box = grid.tile_box(tile_index)
                yield Tile(row, tile_box, strip, ends_row=n == len(indices) - 1)

    def _scored(self, tiles: Iterator[Tile], finite: torch.Tensor) -> Iterator[tuple[list[Tile], torch.Tensor]]:
        """Runs of tiles with their scores, ``batch_size`` tiles per forward pass.

        ``finite`` (a device flag) is cleared in place where a score is not finite.
        Batches run across tile rows, so only the block's last batch is padded;
        a batch is handed on in runs that end where a tile row ends, so the
        rows it finishes can be released before the next run is added.
        """
        shape = self.plan.grid.tile
        batch = TileBatch(
            self.batch_size,
            self.source.channels,
            shape,
            channels_last=self.channels_last,
            device=self.device,
            stride=None if self.device.type == "cpu" else self.plan.grid.stride,
        )
        for group in batched(tiles, self.batch_size):
            with self._timed("fill"):
                x = batch.fill(group, self.normalize)
            with self._timed("model"):
                scores = self.predictor.scores(x, logits=self.predictor.defers_softmax)
                finite.logical_and_(torch.isfinite(scores[: len(group)]).all())
            start = 0
            for end in [i + 1 for i, t in enumerate(group) if t.ends_row or i == len(group) - 1]:
                yield group[start:end], scores[start:end]
                start = end

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] += time.perf_counter() - started

    def _write(self, rows: Released) -> np.ndarray:
        """Count and write released rows (in the writer thread): labels carry nodata already."""
        rows.wait()
        counts = label_counts(rows.labels, self.classes, self.store.nodata)
        self.store.write(rows.box, rows.labels, rows.scores)
        if self.on_write:
            with self._written:  # writers may run in several threads; the refine stage is told in turn
                self.on_write(rows.box)
        return counts


def default_readers(device: torch.device) -> int:
    """Reader threads: one on a CPU (the model's threads want the cores), several for a GPU.

    GDAL releases the GIL while it decodes, and each thread has its own dataset
    handle, so decoding DEFLATE/LZW/ZSTD/JPEG tiles scales with the threads.
    """
    if device.type == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) - 2))


def probability_dtype(store: MaskStore) -> str | None:
    """The dtype name the stitcher casts released probabilities to, or None when none are stored."""
    return None if store.probabilities is None else str(store.probabilities.dtype)


class WriteBehind:
    """Write released rows in threads while the model computes the next ones.

    At most ``pending`` writes are under way (each in its own thread: rows of a
    block go to different chunks), so memory grows by that many released bands
    at most. :meth:`room` waits until one more may start. Leaving the block
    waits for every write, and raises the first error if one failed.
    """

    def __init__(self, write: Callable[..., np.ndarray], classes: int, *, pending: int = 1) -> None:
        self._write = write
        self._limit = pending
        self._pool = ThreadPoolExecutor(pending, thread_name_prefix="gigaseg-write")
        self._pending: collections.deque[Future[np.ndarray]] = collections.deque()
        self.counts = np.zeros(classes + 1, np.int64)

    def submit(self, *args: Any) -> None:
        self.room()
        self._pending.append(self._pool.submit(self._write, *args))

    def room(self) -> None:
        """Wait until fewer than ``pending`` writes are under way."""
        while len(self._pending) >= self._limit:
            self.counts += self._pending.popleft().result()

    def wait(self) -> None:
        while self._pending:
            self.counts += self._pending.popleft().result()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while group := list(itertools.islice(iterator, size)):
        yield group


def label_counts(labels: np.ndarray, classes: int, nodata: int) -> np.ndarray:
    """Pixels per class label ``0 .. classes - 1``, then pixels labelled ``nodata``.

    For a few classes, one comparison per label is 4-5 x faster than
    ``np.bincount``, which first copies the labels to int64; for many, bincount
    goes through them in slices so that copy stays small.
    """
    values = [*range(classes), nodata]
    if len(values) <= 16:
        return np.array([np.count_nonzero(labels == v) for v in values], np.int64)
    flat = labels.reshape(-1)
    found = np.zeros(nodata + 1, np.int64)
    for i in range(0, flat.size, 2**18):
        found += np.bincount(flat[i : i + 2**18], minlength=nodata + 1)
    return np.append(found[:classes], found[nodata])

"""Segment one scene: plan -> per block (read + halo, infer, blend, write) -> finish.

Each output block is processed as a stream of tile rows: the reader thread
reads the next row of tiles while the model runs on this one, the stitcher
keeps a band of rows a little taller than one tile, and finished chunk rows are
written and dropped. Memory is bounded by block width, never by scene size.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

import gigaseg
from gigaseg.errors import InputError
from gigaseg.faults import maybe_fail_write
from gigaseg.io.checksums import chunk_box
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.io.lock import StoreLock
from gigaseg.io.nifti import DEFAULT_CACHE_MAX
from gigaseg.io.sources import ReadsNative, Source, open_source
from gigaseg.io.store import (
    MaskStore,
    StoreLayout,
    check_output_dir,
    create_store,
    open_store,
    remove_partials,
    restore_bookkeeping,
    store_path,
)
from gigaseg.jobs.fingerprint import check_fingerprint, fingerprint
from gigaseg.jobs.memory import fit_block_side, format_bytes, gpu_batch_size, parse_bytes
from gigaseg.jobs.strips import Strip, prefetch, read_strips
from gigaseg.jobs.volume import ModelInput, Normalize, model_input
from gigaseg.models import ModelCard, Predictor, load_checkpoint
from gigaseg.models.views import ViewPredictor
from gigaseg.refine import RefineOptions
from gigaseg.tiler import BlockGrid, Box, Released, Scratch, Stitcher, TileGrid, blend_window, to_pixels
from gigaseg.tiler.pad import pad_to
from gigaseg.tiler.stitch import band_bytes

T = TypeVar("T")
Length = int | str  # pixels, or a string such as "3840m" in CRS units or "80mm"
UNITS_IN_METRES = {"mm": 1e-3, "m": 1.0}
# Largest block side and chunk side by scene dimensions when the options say None. A
# volume's stitcher holds (tile + chunk) slices of a block's plane for every class.
DEFAULT_BLOCK = {2: 16384, 3: 512}
DEFAULT_CHUNK = {2: 512, 3: 64}


@dataclass(frozen=True)
class SegmentOptions:
    """How to tile, blend and write; ``None`` means "from the model card"."""

    tile: Length | None = None
    overlap: Length | None = None
    blend: str = "gaussian"
    merge: str = "probs"
    bands: tuple[int, ...] | None = None
    block: int | None = None  # 16384 for images, 512 for volumes
    chunk: int | None = None  # 512 for images, 64 for volumes
    batch_size: int | None = None
    device: str = "auto"
    probabilities: str | None = None
    zarr_format: int = 2
    overwrite: bool = False
    resume: bool = False
    progress: bool = False
    volume: int | str | None = None  # NIfTI: a volume of a 4-D file, or "channels"
    slice_axis: int | None = None  # run a 2-D model slice by slice along this (i, j, k) axis
    context: int = 0  # 2.5-D: neighbouring slices on each side as channels
    canonical: bool = False  # show the model the volume reoriented to RAS
    cache_dir: str | None = None  # where .nii.gz volumes are decompressed
    cache_max: int | str | None = None  # the cache's bound ("20GiB"; 50 GiB): least recently used copies go
    refine: RefineOptions | None = None  # a refinement stage over the probabilities (gigaseg.jobs.refine)
    tta: bool = False  # average the scores of every flip of each tile
    deterministic: bool = False  # CUDA: deterministic kernels (bit-identical GPU runs)
    readers: int | None = None  # reader threads: 1 on a CPU, up to 8 for a GPU
    band_memory: int | str | None = None  # the stitcher band's budget ("4GiB"); blocks narrow to fit
    nodata_rule: str = "all-bands"  # rasters: nodata where all selected bands are (GDAL), or "any-band"


@dataclass(frozen=True)
class Plan:
    """The tiling of one scene: what every block task needs besides the pixels."""

    grid: TileGrid
    blocks: BlockGrid
    blend: str
    merge: str
    tta: bool = False

    def band_bytes(self, classes: int) -> int:
        """The stitcher's band for a block of this plan (:func:`gigaseg.tiler.stitch.band_bytes`)."""
        return band_bytes(self.grid.tile[0] + self.blocks.chunk[0], math.prod(self.blocks.block[1:]), classes)

    def describe(self) -> dict[str, Any]:
        return {
            "shape": list(self.grid.shape),
            "tile": list(self.grid.tile),
            "overlap": list(self.grid.overlap),
            "block": list(self.blocks.block),
            "chunk": list(self.blocks.chunk),
            "blend": self.blend,
            "merge": self.merge,
            "tta": self.tta,
        }


@dataclass
class Summary:
    """What a run did, for the terminal line and the run report."""

    output: str
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    nodata_pixels: int = 0
    pixels: int = 0
    seconds: float = 0.0
    blocks: int = 0
    blocks_skipped: int = 0

    @property
    def mpix_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        return (
            f"{self.output}: {self.pixels} px in {self.seconds:.1f} s "
            f"({self.mpix_per_s:.2f} Mpix/s); {counts}; nodata {self.nodata_pixels}"
        )


def parse_length(value: Length | None, *, pixel_size: float, multiple: int = 1, unit: str = "m") -> int | None:
    """Pixels from ``512`` or ``"512"``, or from lengths such as ``"3840m"`` or ``"80mm"``.

    ``pixel_size`` is in ``unit``: CRS units ("m") for rasters, millimetres for volumes.
    """
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    try:
        for suffix in ("mm", "m"):
            if text.endswith(suffix):
                length = float(text[: -len(suffix)]) * UNITS_IN_METRES[suffix] / UNITS_IN_METRES[unit]
                return to_pixels(length, pixel_size, multiple=multiple)
        return int(text)
    except ValueError:
        raise InputError(
            f"a length must be pixels (512), CRS units (3840m) or millimetres (80mm), got {value!r}"
        ) from None


def axis_lengths(
    value: Length | None, spacing: tuple[float, ...], *, unit: str, multiple: int = 1
) -> tuple[int, ...] | None:
    """A length per axis: the same pixels on every axis, or one physical length over each spacing."""
    found = [parse_length(value, pixel_size=s, multiple=multiple, unit=unit) for s in spacing]
    return None if found[0] is None else tuple(int(n) for n in found)


def make_plan(
    shape: tuple[int, ...],
    card: ModelCard,
    options: SegmentOptions,
    *,
    pixel_size: float | tuple[float, ...],
    stride: int,
    unit: str = "m",
    flat_axis: int | None = None,
) -> Plan:
    """The tiling of a scene; ``pixel_size`` per axis (or one for all axes).

    ``flat_axis`` makes tiles one pixel thick along that axis with no overlap
    there: slice-wise inference of a 2-D model on a volume.
    """
    ndim = len(shape)
    spacing = (pixel_size,) * ndim if isinstance(pixel_size, int | float) else tuple(pixel_size)
    tile = axis_lengths(options.tile, spacing, unit=unit, multiple=stride) or (card.tile,) * ndim
    overlap = axis_lengths(options.overlap, spacing, unit=unit)
    overlap = (card.overlap,) * ndim if overlap is None else overlap
    if flat_axis is not None:
        tile = tuple(1 if a == flat_axis else t for a, t in enumerate(tile))
        overlap = tuple(0 if a == flat_axis else o for a, o in enumerate(overlap))
    grid = TileGrid.create(shape, tile, overlap)
    block = options.block or DEFAULT_BLOCK.get(ndim, DEFAULT_BLOCK[3])
    chunk = options.chunk or DEFAULT_CHUNK.get(ndim, DEFAULT_CHUNK[3])
    budget = parse_bytes(options.band_memory)
    side = fit_block_side(
        depth=grid.tile[0] + chunk, classes=card.num_classes, ndim=ndim, budget=budget, chunk=chunk, limit=block
    )
    # Blocks stream along axis 0, so only their cross-section sets the band's size.
    blocks = BlockGrid.create(shape, max_block=(block, *(side,) * (ndim - 1)), chunk=chunk)
    blend_window(options.blend, (1,))  # validates the name early
    plan = Plan(grid, blocks, options.blend, options.merge, options.tta)
    if plan.band_bytes(card.num_classes) > budget:
        warnings.warn(
            f"the stitcher's band takes {format_bytes(plan.band_bytes(card.num_classes))} with blocks of one "
            f"chunk ({list(blocks.block)}), more than the band memory budget of {format_bytes(budget)}; "
            "a smaller --chunk or a larger --band-memory",
            GigasegWarning,
            stacklevel=2,
        )
    return plan


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
        predictor: Predictor | ViewPredictor,
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
        # free, and a band of labels every few milliseconds needs several to compress.
        self.writers = 1 if self.device.type == "cpu" else 4
        # A fixed batch shape for the whole scene (kernels are chosen by batch size),
        # but never more tiles than the scene has: a 9-tile scene runs one batch of 9.
        self.batch_size = min(predictor.batch_size, plan.grid.size)
        self.channels_last = len(plan.grid.tile) == 2  # how 2-D networks take their input
        self.on_write: Callable[[Box], None] | None = None  # told of every box written (refinement)
        # Seconds of the model's thread: waiting on readers and writers, and its own host time
        # building batches, launching the network, adding and releasing (on a GPU the device
        # works meanwhile, so these sum to the wall time only where the host is the bottleneck).
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
        grid, box = self.plan.grid, self.plan.blocks.block_box(index)
        ranges = grid.tiles_overlapping(box)
        chunk = self.plan.blocks.chunk[0]
        stitcher = Stitcher(
            grid,
            box,
            self.classes,
            blend=self.plan.blend,
            depth=grid.tile[0] + chunk,
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
        with WriteBehind(self._write, self.classes, pending=self.writers) as writer:
            for run, scores in self._scored(self._tiles(ranges, strips)):
                tile = run[-1]
                with self._timed("add"):
                    stitcher.add_batch([t.box for t in run], scores)
                    if tile.ends_row:  # the row's tiles are in: its pixels' validity, once per row
                        stitcher.set_valid(tile.strip.box, tile.strip.valid)
                if not tile.ends_row:
                    continue
                until = box.stop[0] if tile.row == last_row else origins[tile.row + 1] // chunk * chunk
                if until > stitcher.start:
                    started = time.perf_counter()
                    writer.room()  # at most `writers` released bands in memory
                    self.timings["write"] += time.perf_counter() - started
                    with self._timed("release"):
                        writer.submit(stitcher.release(until, scores=keep))
        with self.store.io_errors():
            maybe_fail_write(index)
        self.store.mark_done(index, writer.counts)
        return writer.counts

    def _strips(self, ranges: tuple[range, ...]) -> Iterator[Strip]:
        """The block's tile rows as strips staged on the model's device, read ahead in threads.

        Small integer pixels stay in their own type (a uint8 strip is a quarter
        of a float32 one) and are converted and normalised on the device, batch
        by batch (:class:`TileBatch`). For 2-D models the pixels are laid out
        channels-last, as the network takes them. Rasters with internal blocks
        are read by whole block rows, each decoded once (:mod:`gigaseg.jobs.strips`).
        """
        grid = self.plan.grid
        boxes = []
        for row in ranges[0]:
            first = grid.tile_box((row, *(r[0] for r in ranges[1:])))
            last = grid.tile_box((row, *(r[-1] for r in ranges[1:])))
            boxes.append(first.union(last))
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
            indices = [(row, *rest) for rest in itertools.product(*ranges[1:])]
            for n, tile_index in enumerate(indices):
                tile_box = grid.tile_box(tile_index)
                yield Tile(row, tile_box, strip, ends_row=n == len(indices) - 1)

    def _scored(self, tiles: Iterator[Tile]) -> Iterator[tuple[list[Tile], torch.Tensor]]:
        """Runs of tiles with their scores, ``batch_size`` tiles per forward pass.

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
            if stop - start == 1:
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


@dataclass(frozen=True)
class SceneSpec:
    """One scene's job: everything a block task needs, small and picklable."""

    input: str
    model: str
    output: str
    options: SegmentOptions = SegmentOptions()
    card: dict[str, Any] | None = None  # for plain state_dicts without a card of their own

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


def open_runner(
    spec: SceneSpec, *, create: bool = False, planned: tuple[ModelInput, Plan] | None = None
) -> BlockRunner:
    """Source, model and store of ``spec`` ready to run blocks (``planned``: by :func:`plan_scene`).

    With ``create`` the store is created (or, with resume, checked and reopened):
    that is the driver's job, once per scene, holding the store's lock. Block
    tasks open it for writing.
    """
    fed, plan = planned or plan_scene(spec)
    if create:
        store = _open_output(spec, plan, fed)
    else:
        store = open_store(spec.output, mode="r+")
    return BlockRunner(plan, fed.source, fed.predictor, store, normalize=fed.normalize, readers=spec.options.readers)


def cache_bytes(value: int | str | None) -> int:
    """The NIfTI cache's bound in bytes: ``"20GiB"``, a number of bytes, or ``None`` for 50 GiB."""
    try:
        return parse_bytes(value, default=DEFAULT_CACHE_MAX)
    except InputError:
        raise InputError(f"--cache-max must be a positive size such as 20GiB or 500MB, got {value!r}") from None


def plan_scene(spec: SceneSpec, *, dry: bool = False) -> tuple[ModelInput, Plan]:
    """Open the model and the input, check they fit, and tile the scene.

    The model comes first: a bad model is reported before a ``.nii.gz`` is
    decompressed into its cache.
    """
    options = spec.options
    check_options(options)
    predictor = load_predictor(spec)
    card = predictor.card
    source = open_source(
        spec.input,
        bands=options.bands,
        nodata_rule=options.nodata_rule,
        volume=options.volume,
        cache_dir=options.cache_dir,
        cache_max=cache_bytes(options.cache_max),
        header_only=dry,
    )
    fed = model_input(
        source,
        predictor,
        slice_axis=options.slice_axis,
        context=options.context,
        canonical=options.canonical,
        fit=not dry,
    )
    check_channels(card, fed.source.channels, spec.input)
    plan = make_plan(
        source.shape,
        card,
        options,
        pixel_size=length_spacing(source, options),
        unit=source.unit,
        stride=predictor.stride,
        flat_axis=fed.flat_axis,
    )
    fed.predictor.check_tile(plan.grid.tile)
    if options.batch_size is None and predictor.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(predictor.device)
        predictor.batch_size = gpu_batch_size(
            free=free,
            tile=plan.grid.tile,
            channels=fed.source.channels,
            classes=card.num_classes,
            band=plan.band_bytes(card.num_classes),
        )
    return fed, plan


def check_options(options: SegmentOptions) -> None:
    """Refuse sizes that cannot be: zero or negative counts and lengths."""
    for name in ("block", "chunk", "batch_size", "readers"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
    if options.context < 0:
        raise InputError(f"context must be 0 or more slices, got {options.context}")
    for name in ("tile", "overlap"):
        value = getattr(options, name)
        number = str(value).strip().lower().removesuffix("mm").removesuffix("m")
        try:
            negative = value is not None and float(number) < (1 if name == "tile" else 0)
        except ValueError:
            continue  # parse_length names the bad unit
        if negative:
            least = "1 pixel" if name == "tile" else "0"
            raise InputError(f"{name} must be at least {least}, got {value!r}")


def length_spacing(source: Source, options: SegmentOptions) -> tuple[float, ...]:
    """Pixel size per axis in the unit lengths are given in: metres for rasters, mm for volumes.

    A raster in degrees (EPSG:4326) is measured at its centre latitude, with a
    warning when a length in metres is given.
    """
    georef = getattr(source, "georef", None)
    if source.unit != "m" or not isinstance(georef, Georef):
        return tuple(source.spacing)
    metres = georef.metres_per_pixel(tuple(source.shape))
    if metres is None:
        return tuple(source.spacing)
    lengths = [v for v in (options.tile, options.overlap) if isinstance(v, str) and v.strip().lower().endswith("m")]
    if lengths and georef.is_geographic:
        warnings.warn(
            f"{source.path} is in degrees: {', '.join(lengths)} measured at its centre latitude "
            f"({metres[1]:.2f} m x {metres[0]:.2f} m per pixel)",
            GigasegWarning,
            stacklevel=3,
        )
    return metres


_PREDICTORS: dict[str, Predictor] = {}


def load_predictor(spec: SceneSpec) -> Predictor:
    """The scene's model, loaded once per process and reused by every block task."""
    o = spec.options
    key = json.dumps([spec.model, spec.card, o.device, o.batch_size, o.merge, o.tta, o.deterministic], default=str)
    if key not in _PREDICTORS:
        card = ModelCard.from_dict(spec.card) if spec.card else None
        model, card = load_checkpoint(spec.model, card=card)
        _PREDICTORS.clear()  # one model per worker at a time
        _PREDICTORS[key] = Predictor(
            model,
            card,
            device=o.device,
            batch_size=o.batch_size,
            merge=o.merge,
            tta=o.tta,
            deterministic=o.deterministic,
        )
    return _PREDICTORS[key]


def segment(
    input_path: str | Path,
    model_path: str | Path,
    output: str | Path,
    options: SegmentOptions | None = None,
    *,
    card: ModelCard | None = None,
) -> Summary:
    """Segment one raster or volume into a Zarr mask store; the whole path in one call."""
    options = options or SegmentOptions()
    if options.refine and not options.probabilities:
        options = replace(options, probabilities="uint8")  # the refinement's unary; kept afterwards
    spec = SceneSpec(str(input_path), str(model_path), str(output), options, card.to_dict() if card else None)
    existed = Path(output).exists()
    planned = plan_checked(spec)
    with StoreLock(output):
        try:
            runner = open_runner(spec, create=True, planned=planned)
            refine = _start_refine(runner, input_path, options)
            return run_blocks(runner, output, options.progress, refine=refine)
        except BaseException:
            if not existed or options.overwrite:
                discard_if_empty(output)
            raise


def plan_checked(spec: SceneSpec) -> tuple[ModelInput, Plan]:
    """:func:`plan_scene`, then every check that needs no output: memory and the output's directory.

    Everything a run can refuse is refused here, before a store exists.
    """
    from gigaseg.jobs.plan import check_fits  # the dry run's memory model builds on this module

    planned = plan_scene(spec)
    check_fits(spec, *planned)
    check_output_dir(spec.output)
    return planned


def discard_if_empty(output: str | Path) -> None:
    """Remove a store this run created when it failed before any block was written.

    Such a store holds nothing, and left behind it would only make the rerun
    ask for --overwrite or --resume.
    """
    with contextlib.suppress(Exception):
        store = open_store(output)
        if not store.done().any():
            shutil.rmtree(output)


def _start_refine(runner: BlockRunner, input_path: str | Path, options: SegmentOptions) -> Any:
    from gigaseg.jobs.refine import check_resume, start_refine

    if options.resume:
        check_resume(runner.store, options.refine)
    if not options.refine:
        return None
    refine = replace(options.refine, resume=options.resume, progress=options.progress)
    stage = start_refine(runner.store, input_path, refine, bands=getattr(runner.source, "bands", None))
    runner.on_write = stage.mark_written
    return stage


def check_channels(card: ModelCard, channels: int, path: str) -> None:
    """Bands fed must be the bands the model takes (dimensions: ``volume.check_dims``)."""
    if card.in_channels != channels:
        raise InputError(
            f"the model takes {card.in_channels} bands but {channels} are selected from {path}; "
            f"choose {card.in_channels} with --bands"
        )


def _open_output(spec: SceneSpec, plan: Plan, fed: ModelInput) -> MaskStore:
    """Create the store; with resume, reopen it if it was started with this very input, model and options."""
    options, card = spec.options, fed.predictor.card
    current = fingerprint(spec.input, spec.model, pixel_options(plan, fed, options))
    if options.resume and Path(spec.output).exists():
        from gigaseg.jobs.refine import check_resume  # refinement builds on this module

        remove_partials(spec.output)
        store = open_store(spec.output, mode="r+")
        check_fingerprint(spec.output, store.attrs.get("fingerprint"), current)
        check_resume(store, options.refine)  # before anything in the store changes
        warn_kept_layout(store, options)
        if restore_bookkeeping(spec.output):
            store = open_store(spec.output, mode="r+")
        repair(store, plan)
        return store
    layout = StoreLayout(
        shape=plan.grid.shape,
        chunks=plan.blocks.chunk,
        block_counts=plan.blocks.counts,
        classes=list(card.classes),
        georef=fed.source.georef,
        probabilities=options.probabilities,
        zarr_format=options.zarr_format,
        attrs={
            **provenance(plan, card, fed.source, spec.model),
            "model_input": fed.record,
            "fingerprint": current,
        },
    )
    return create_store(spec.output, layout, overwrite=options.overwrite)


def pixel_options(plan: Plan, fed: ModelInput, options: SegmentOptions) -> dict[str, Any]:
    """Every option that changes a pixel of the output.

    Left out: the batch size (a GPU's follows its free memory; the batch shape
    is fixed per scene) and the probabilities' type (a resume writes what the
    store holds).
    """
    return {
        "plan": plan.describe(),
        "source": {k: v for k, v in fed.source.describe().items() if k != "cache"},
        "model_input": fed.record,
        "model_card_sha256": fed.predictor.card.digest(),
        "device": fed.predictor.device.type,
        "precision": fed.predictor.precision,
        "deterministic": options.deterministic,
    }


def warn_kept_layout(store: MaskStore, options: SegmentOptions) -> None:
    """A resume writes the arrays the store has: say so when other ones were asked for."""
    kept = {"probabilities": probability_dtype(store), "zarr_format": store.group.metadata.zarr_format}
    asked = {"probabilities": options.probabilities, "zarr_format": options.zarr_format}
    for name, value in asked.items():
        if value is not None and value != kept[name]:
            warnings.warn(
                f"{store_path(store)} keeps its {name} ({kept[name]}); {name}={value} applies to new stores only",
                GigasegWarning,
                stacklevel=3,
            )


def repair(store: MaskStore, plan: Plan) -> None:
    """Before a resume: blocks whose chunks are damaged, deleted or unrecorded run again,
    and so do blocks whose own records cannot be decoded."""
    damaged = store.verify().damaged
    unreadable = [tuple(map(int, i)) for i in np.argwhere(store.damaged_records())]
    if not damaged and not unreadable:
        return
    corners = [chunk_box(d.chunk, plan.blocks.chunk, plan.grid.shape).start for d in damaged]
    blocks = {tuple(a // b for a, b in zip(c, plan.blocks.block, strict=True)) for c in corners}
    blocks = sorted(blocks | set(unreadable))
    what = damaged[0].line() if damaged else f"the record of block {list(unreadable[0])} cannot be decoded"
    count = len(damaged) + len(unreadable)
    warnings.warn(
        f"{count} chunks of {store_path(store)} do not hold what was written ({what}"
        f"{', ...' if count > 1 else ''}); writing blocks {blocks} again",
        GigasegWarning,
        stacklevel=2,
    )
    for index in blocks:
        store.blocks_done[index] = 0
    refined = store.attrs.get("refine")
    store.reopen(**({"refine": {**refined, "complete": False}} if refined else {}))


def provenance(plan: Plan, card: ModelCard, source: Source, model_path: str | Path) -> dict[str, Any]:
    return {
        "version": gigaseg.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": str(Path(source.path).absolute()),
        **source.describe(),
        "model": str(Path(model_path).absolute()),
        "model_card": card.to_dict(),
        "model_card_sha256": card.digest(),
        "plan": plan.describe(),
    }


def run_blocks(runner: BlockRunner, output: str | Path, progress: bool, *, refine: Any = None) -> Summary:
    """Run every block not yet done, in order, then mark the store complete.

    With a ``refine`` stage (:class:`gigaseg.jobs.refine.RefineStage`) the store is
    complete only once it has refined every block; the counts are then the refined ones.
    """
    started = time.perf_counter()
    todo = pending_blocks(runner.store, runner.plan)
    total = math.prod(runner.plan.grid.shape)
    with tqdm(total=total, disable=not progress, unit="px", unit_scale=True, desc="segment", leave=False) as bar:
        try:
            for index in todo:
                runner.run(index)
                bar.update(runner.plan.blocks.block_box(index).size)
        except BaseException:
            if refine is not None:
                refine.abort()
            raise
    counts = refine.finish() if refine is not None else None
    runner.source.close()
    summary = Summary(
        str(output),
        list(runner.predictor.card.classes),
        blocks=runner.plan.blocks.size,
        blocks_skipped=runner.plan.blocks.size - len(todo),
    )
    return finish_scene(runner.store, summary, time.perf_counter() - started, counts)


def pending_blocks(store: MaskStore, plan: Plan) -> list[tuple[int, ...]]:
    """Blocks not yet recorded done, in grid order."""
    done = store.done()
    return [i for i in plan.blocks.indices() if not done[i]]


def finish_scene(store: MaskStore, summary: Summary, seconds: float, counts: np.ndarray | None = None) -> Summary:
    """Fill the summary from the class counts, record it, and mark the store complete.

    Without ``counts`` (those of a refinement) they come from the store's
    per-block records, so a resumed run counts the blocks of earlier runs too.
    """
    counts = store.counts() if counts is None else counts
    summary.counts = {name: int(n) for name, n in zip(summary.classes, counts[:-1], strict=True)}
    summary.nodata_pixels = int(counts[-1])
    summary.pixels = int(counts.sum())
    summary.seconds = seconds
    store.set_attrs(summary=asdict(summary))
    store.finish()
    return summary

"""Segment one scene: plan -> per block (read + halo, infer, blend, write) -> finish.

Each output block is processed as a stream of tile rows: the reader thread
reads the next row of tiles while the model runs on this one, the stitcher
keeps a band of rows a little taller than one tile, and finished chunk rows are
written and dropped. Memory is bounded by block width, never by scene size.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

import gigaseg
from gigaseg.errors import InputError
from gigaseg.faults import maybe_fail_write
from gigaseg.io.sources import ReadsNative, Source, open_source
from gigaseg.io.store import MaskStore, StoreLayout, create_store, open_store, remove_partials
from gigaseg.jobs.volume import ModelInput, Normalize, model_input
from gigaseg.models import ModelCard, Predictor, load_checkpoint
from gigaseg.refine import RefineOptions
from gigaseg.tiler import BlockGrid, Box, Released, Scratch, Stitcher, TileGrid, blend_window, to_pixels

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
    refine: RefineOptions | None = None  # a refinement stage over the probabilities (gigaseg.jobs.refine)
    tta: bool = False  # average the scores of every flip of each tile
    deterministic: bool = False  # CUDA: deterministic kernels (bit-identical GPU runs)


@dataclass(frozen=True)
class Plan:
    """The tiling of one scene: what every block task needs besides the pixels."""

    grid: TileGrid
    blocks: BlockGrid
    blend: str
    merge: str
    tta: bool = False

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
    blocks = BlockGrid.create(shape, max_block=block, chunk=chunk)
    blend_window(options.blend, (1,))  # validates the name early
    return Plan(grid, blocks, options.blend, options.merge, options.tta)


class BlockRunner:
    """Everything one process needs to run blocks of one scene into one store."""

    def __init__(
        self,
        plan: Plan,
        source: Source,
        predictor: Predictor,
        store: MaskStore,
        *,
        normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.plan = plan
        self.source = source
        self.predictor = predictor
        self.store = store
        self.normalize = normalize or predictor.card.normalize
        self.classes = predictor.card.num_classes
        self.channels_last = len(plan.grid.tile) == 2  # how 2-D networks take their input
        self.on_write: Callable[[Box], None] | None = None  # told of every box written (refinement)
        self._local = threading.local()  # blocks may run in several threads of one process

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
        )
        keep_scores = self.store.probabilities is not None
        origins, last_row = grid.origins[0], ranges[0][-1]
        strips = prefetch(lambda r: self._read_strip(r, ranges), ranges[0])
        with WriteBehind(self._write, self.classes) as writer:
            for tile in self._scored(self._tiles(ranges, strips)):
                tile_box, scores, valid = tile.box, tile.scores, tile.valid
                inner = tuple(slice(0, n) for n in tile_box.shape)
                stitcher.add(tile_box, scores[(slice(None), *inner)], valid)
                if not tile.ends_row:
                    continue
                until = box.stop[0] if tile.row == last_row else origins[tile.row + 1] // chunk * chunk
                if until > stitcher.start:
                    writer.wait()  # one released band in memory at a time
                    writer.submit(stitcher.release(until, scores=keep_scores))
        with self.store.io_errors():
            maybe_fail_write(index)
        self.store.mark_done(index)
        return writer.counts

    def _read_strip(self, row: int, ranges: tuple[range, ...]) -> tuple[Box, np.ndarray, np.ndarray]:
        """One tile row's pixels as the source holds them; runs in the reader thread.

        Small integer pixels stay in their own type (a uint8 strip is a quarter
        of a float32 one, and the reader holds up to three strips): they are
        converted and normalised batch by batch (:class:`TileBatch`). For 2-D
        models the pixels are laid out channels-last, as the network takes them.
        """
        grid = self.plan.grid
        first = grid.tile_box((row, *(r[0] for r in ranges[1:])))
        last = grid.tile_box((row, *(r[-1] for r in ranges[1:])))
        strip = first.union(last)
        read = self.source.read_native if isinstance(self.source, ReadsNative) else self.source.read
        data, valid = read(strip)
        if self.channels_last:
            data = np.moveaxis(np.ascontiguousarray(np.moveaxis(data, 0, -1)), -1, 0)
        return strip, data, valid

    def _tiles(self, ranges: tuple[range, ...], strips: Iterable[tuple[Box, np.ndarray, np.ndarray]]) -> Iterator[Tile]:
        """Every tile of the block in global tile order, as views into its row's strip."""
        grid = self.plan.grid
        for row, (strip_box, data, valid) in zip(ranges[0], strips, strict=True):
            indices = [(row, *rest) for rest in itertools.product(*ranges[1:])]
            for n, tile_index in enumerate(indices):
                tile_box = grid.tile_box(tile_index)
                inside = tile_box.slices(strip_box.start)
                pixels = data[(slice(None), *inside)]
                yield Tile(row, tile_box, pixels, valid[inside], ends_row=n == len(indices) - 1)

    def _scored(self, tiles: Iterator[Tile]) -> Iterator[Tile]:
        """The tiles with their class scores, ``batch_size`` tiles per forward pass.

        Batches run across tile rows, so only the block's last batch is padded,
        and are copied into one reused input buffer.
        """
        size, shape = self.predictor.batch_size, self.plan.grid.tile
        batch = TileBatch(size, self.source.channels, shape, channels_last=self.channels_last)
        for group in batched(tiles, size):
            x = batch.fill([t.pixels for t in group], [t.valid for t in group], self.normalize)
            for tile in group:
                tile.pixels = None  # its strip may go as soon as the next one is in
            scores = self.predictor(x)
            for tile, tile_scores in zip(group, scores, strict=False):
                tile.scores = tile_scores
                yield tile

    def _write(self, rows: Released) -> np.ndarray:
        labels, valid = rows.labels.astype(self.store.mask.dtype, copy=False), rows.valid
        labels[~valid] = self.store.nodata
        counts = label_counts(labels, self.classes, self.store.nodata)
        probs = rows.scores
        if probs is not None:
            probs = softmax(probs) if self.plan.merge == "logits" else probs
            probs[:, ~valid] = 0
        self.store.write(rows.box, labels, probs)
        if self.on_write:
            self.on_write(rows.box)
        return counts


@dataclass(slots=True)
class Tile:
    """One tile on its way through the pipeline: its pixels, then its scores."""

    row: int
    box: Box
    pixels: np.ndarray | None  # (channels, *box.shape), a view into the row's strip, until batched
    valid: np.ndarray  # box.shape
    ends_row: bool
    scores: np.ndarray | None = None


class TileBatch:
    """One reused ``(batch, channels, *tile)`` float32 input buffer.

    With ``channels_last`` the memory is ``(batch, *tile, channels)``, which a 2-D
    network in channels-last format takes without a copy.
    """

    def __init__(self, size: int, channels: int, tile: tuple[int, ...], *, channels_last: bool) -> None:
        if channels_last:
            self.x = np.moveaxis(np.zeros((size, *tile, channels), np.float32), -1, 1)
        else:
            self.x = np.zeros((size, channels, *tile), np.float32)

    def fill(self, tiles: list[np.ndarray], valid: list[np.ndarray], normalize: Normalize) -> np.ndarray:
        """Copy tiles in, mirror-padded to the tile size, and normalise them; unused slots are zero.

        Nodata pixels are set to 0 after normalisation, so they enter the model
        as the band mean and NaN or inf never does. Normalising here rather
        than per strip repeats it on the overlaps (about 30 % more pixels),
        but needs no float32 strip; the arithmetic per pixel is the same.
        """
        shape, n = self.x.shape[2:], len(tiles)
        for i, pixels in enumerate(tiles):
            self.x[i] = pad_to(pixels, shape)
        filled = self.x[:n]
        normalized = normalize(filled)  # in place, as the card's and the fitted normalisers work
        if normalized is not filled:
            filled[...] = normalized
        for i, ok in enumerate(valid):
            if not ok.all():
                self.x[i][:, ~pad_to(ok[None], shape)[0]] = 0
        self.x[n:] = 0
        return self.x


class WriteBehind:
    """Write released rows in a thread while the model computes the next ones.

    At most one write is pending, so memory grows by one released band at most.
    Leaving the block waits for the last write, and raises its error if it failed.
    """

    def __init__(self, write: Callable[..., np.ndarray], classes: int) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gigaseg-write")
        self._pending: Future[np.ndarray] | None = None
        self.counts = np.zeros(classes + 1, np.int64)

    def submit(self, *args: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(self._write, *args)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.counts += pending.result()

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


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(channels, *spatial)`` mirror-padded at the end of each spatial axis to ``shape``."""
    pad = [(0, 0)] + [(0, s - n) for s, n in zip(shape, array.shape[1:], strict=True)]
    return np.pad(array, pad, mode="symmetric") if any(p for _, p in pad) else array


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


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def prefetch(fn: Callable[[T], Any], items: Iterable[T]) -> Iterator[Any]:
    """``fn(item)`` for each item, computing the next one in a thread meanwhile."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="gigaseg-read") as pool:
        future = pool.submit(fn, items[0])
        for item in items[1:]:
            result = future.result()
            future = pool.submit(fn, item)
            yield result
        yield future.result()


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


def open_runner(spec: SceneSpec, *, create: bool = False) -> BlockRunner:
    """Source, model and store of ``spec`` ready to run blocks.

    With ``create`` the store is created (or, with resume, checked and reopened):
    that is the driver's job, once per scene. Block tasks open it for writing.
    """
    fed, plan = plan_scene(spec)
    if create:
        store = _open_output(spec.output, plan, fed.predictor.card, fed, spec.options, spec.model)
    else:
        store = open_store(spec.output, mode="r+")
    return BlockRunner(plan, fed.source, fed.predictor, store, normalize=fed.normalize)


def plan_scene(spec: SceneSpec) -> tuple[ModelInput, Plan]:
    """Open the model and the input, check they fit, and tile the scene.

    The model comes first: a bad model is reported before a ``.nii.gz`` is
    decompressed into its cache.
    """
    options = spec.options
    predictor = load_predictor(spec)
    card = predictor.card
    source = open_source(spec.input, bands=options.bands, volume=options.volume, cache_dir=options.cache_dir)
    fed = model_input(
        source, predictor, slice_axis=options.slice_axis, context=options.context, canonical=options.canonical
    )
    check_channels(card, fed.source.channels, spec.input)
    plan = make_plan(
        source.shape,
        card,
        options,
        pixel_size=source.spacing,
        unit=source.unit,
        stride=predictor.stride,
        flat_axis=fed.flat_axis,
    )
    fed.predictor.check_tile(plan.grid.tile)
    return fed, plan


_PREDICTORS: dict[str, Predictor] = {}


def load_predictor(spec: SceneSpec) -> Predictor:
    """The scene's model, loaded once per process and reused by every block task."""
    o = spec.options
    key = json.dumps([spec.model, spec.card, o.device, o.batch_size, o.merge, o.tta, o.deterministic], default=str)
    if key not in _PREDICTORS:
        card = ModelCard.from_dict(spec.card) if spec.card else None
        model, card = load_checkpoint(spec.model, card=card)
        _PREDICTORS.clear()  # one model per worker at a time
        _PREDICTORS[key] = Predictor(model, card, device=o.device, batch_size=o.batch_size, merge=o.merge, tta=o.tta)
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
    runner = open_runner(spec, create=True)
    refine = _start_refine(runner, input_path, options)
    return run_blocks(runner, output, options.progress, refine=refine)


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


def _open_output(
    output: str | Path,
    plan: Plan,
    card: ModelCard,
    fed: ModelInput,
    options: SegmentOptions,
    model_path: str | Path,
) -> MaskStore:
    if options.resume and Path(output).exists():
        remove_partials(output)
        store = open_store(output, mode="r+")
        stored = store.attrs.get("plan")
        if stored != json.loads(json.dumps(plan.describe())):
            raise InputError(
                f"cannot resume {output}: it was written with plan {stored}, "
                f"not {plan.describe()}; use --overwrite to start again"
            )
        return store
    layout = StoreLayout(
        shape=plan.grid.shape,
        chunks=plan.blocks.chunk,
        block_counts=plan.blocks.counts,
        classes=list(card.classes),
        georef=fed.source.georef,
        probabilities=options.probabilities,
        zarr_format=options.zarr_format,
        attrs={**provenance(plan, card, fed.source, model_path), "model_input": fed.record},
    )
    return create_store(output, layout, overwrite=options.overwrite)


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
    counts = np.zeros(runner.classes + 1, np.int64)
    total = math.prod(runner.plan.grid.shape)
    with tqdm(total=total, disable=not progress, unit="px", unit_scale=True, desc="segment", leave=False) as bar:
        try:
            for index in todo:
                counts += runner.run(index)
                bar.update(runner.plan.blocks.block_box(index).size)
        except BaseException:
            if refine is not None:
                refine.abort()
            raise
    if refine is not None:
        counts = refine.finish()
    runner.source.close()
    summary = Summary(
        str(output),
        list(runner.predictor.card.classes),
        blocks=runner.plan.blocks.size,
        blocks_skipped=runner.plan.blocks.size - len(todo),
    )
    return finish_scene(runner.store, summary, counts, time.perf_counter() - started)


def pending_blocks(store: MaskStore, plan: Plan) -> list[tuple[int, ...]]:
    """Blocks not yet recorded done, in grid order."""
    done = store.done()
    return [i for i in plan.blocks.indices() if not done[i]]


def finish_scene(store: MaskStore, summary: Summary, counts: np.ndarray, seconds: float) -> Summary:
    """Fill the summary from the class counts, record it, and mark the store complete."""
    summary.counts = {name: int(n) for name, n in zip(summary.classes, counts[:-1], strict=True)}
    summary.nodata_pixels = int(counts[-1])
    summary.pixels = int(counts.sum())
    summary.seconds = seconds
    store.set_attrs(summary=asdict(summary))
    store.finish()
    return summary

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
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

import gigaseg
from gigaseg.errors import InputError
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.store import MaskStore, StoreLayout, create_store, open_store
from gigaseg.models import ModelCard, Predictor, load_checkpoint
from gigaseg.tiler import BlockGrid, Box, Stitcher, TileGrid, blend_window, to_pixels

T = TypeVar("T")
Length = int | str  # pixels, or a string such as "3840m" in CRS units


@dataclass(frozen=True)
class SegmentOptions:
    """How to tile, blend and write; ``None`` means "from the model card"."""

    tile: Length | None = None
    overlap: Length | None = None
    blend: str = "gaussian"
    merge: str = "probs"
    bands: list[int] | None = None
    block: int = 16384
    chunk: int = 512
    batch_size: int | None = None
    device: str = "auto"
    probabilities: str | None = None
    zarr_format: int = 2
    overwrite: bool = False
    resume: bool = False
    progress: bool = False
    tta: bool = False


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


def parse_length(value: Length | None, *, pixel_size: float, multiple: int = 1) -> int | None:
    """Pixels from ``512`` or ``"512"``, or from CRS units such as ``"3840m"``."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    try:
        if text.endswith("m"):
            return to_pixels(float(text[:-1]), pixel_size, multiple=multiple)
        return int(text)
    except ValueError:
        raise InputError(f"a length must be pixels (512) or CRS units (3840m), got {value!r}") from None


def make_plan(
    shape: tuple[int, ...], card: ModelCard, options: SegmentOptions, *, pixel_size: float, stride: int
) -> Plan:
    tile = parse_length(options.tile, pixel_size=pixel_size, multiple=stride) or card.tile
    overlap = parse_length(options.overlap, pixel_size=pixel_size)
    overlap = card.overlap if overlap is None else overlap
    grid = TileGrid.create(shape, tile, overlap)
    blocks = BlockGrid.create(shape, max_block=options.block, chunk=options.chunk)
    blend_window(options.blend, (1,))  # validates the name early
    return Plan(grid, blocks, options.blend, options.merge, options.tta)


class BlockRunner:
    """Everything one process needs to run blocks of one scene into one store."""

    def __init__(self, plan: Plan, source: GeoTiffSource, predictor: Predictor, store: MaskStore) -> None:
        self.plan = plan
        self.source = source
        self.predictor = predictor
        self.store = store
        self.window = blend_window(plan.blend, plan.grid.tile)
        self.classes = predictor.card.num_classes
        self.counts = np.zeros(self.classes + 1, np.int64)  # last bin: nodata

    def run(self, index: tuple[int, ...], on_rows: Callable[[int], None] | None = None) -> None:
        """Compute block ``index``, write its chunks, then record it done."""
        grid, box = self.plan.grid, self.plan.blocks.block_box(index)
        ranges = grid.tiles_overlapping(box)
        chunk = self.plan.blocks.chunk[0]
        stitcher = Stitcher(box, self.classes, depth=grid.tile[0] + chunk)
        origins = grid.origins[0]
        strips = prefetch(lambda r: self._read_strip(r, ranges), ranges[0])
        for row, strip in zip(ranges[0], strips, strict=True):
            self._add_row(stitcher, row, ranges, strip)
            last = row == ranges[0][-1]
            until = box.stop[0] if last else origins[row + 1] // chunk * chunk
            if until > stitcher.start:
                released = self._write(*stitcher.release(until))
                if on_rows:
                    on_rows(released)
        self.store.mark_done(index)

    def _read_strip(self, row: int, ranges: tuple[range, ...]) -> tuple[Box, np.ndarray, np.ndarray]:
        grid = self.plan.grid
        first = grid.tile_box((row, *(r[0] for r in ranges[1:])))
        last = grid.tile_box((row, *(r[-1] for r in ranges[1:])))
        strip = first.union(last)
        data, valid = self.source.read(strip)
        return strip, data, valid

    def _add_row(
        self,
        stitcher: Stitcher,
        row: int,
        ranges: tuple[range, ...],
        strip: tuple[Box, np.ndarray, np.ndarray],
    ) -> None:
        grid = self.plan.grid
        strip_box, data, valid = strip
        indices = [(row, *rest) for rest in itertools.product(*ranges[1:])]
        boxes = [grid.tile_box(i) for i in indices]
        tiles = np.stack([cut_tile(data, valid, b, strip_box, grid.tile) for b in boxes])
        scores = self.predictor(self.predictor.card.normalize(tiles[:, :-1]) * tiles[:, -1:])
        for tile_box, tile_scores in zip(boxes, scores, strict=True):
            inner = tuple(slice(0, n) for n in tile_box.shape)
            tile_valid = valid[tile_box.slices(strip_box.start)]
            stitcher.add(tile_box, tile_scores[(slice(None), *inner)], self.window[inner], tile_valid)

    def _write(self, box: Box, scores: np.ndarray, valid: np.ndarray) -> int:
        labels = scores.argmax(axis=0).astype(self.store.mask.dtype)
        labels[~valid] = self.store.nodata
        self.counts += np.bincount(np.where(valid, labels, self.classes).ravel(), minlength=self.classes + 1)
        probs = None
        if self.store.probabilities is not None:
            probs = softmax(scores) if self.plan.merge == "logits" else scores
            probs[:, ~valid] = 0
        self.store.write(box, labels, probs)
        return box.size


def cut_tile(data: np.ndarray, valid: np.ndarray, tile: Box, strip: Box, size: tuple[int, ...]) -> np.ndarray:
    """One tile plus its validity as the last channel, padded to ``size`` by mirroring.

    Nodata pixels are zeroed after normalisation (the validity channel multiplies
    them), so they enter the model as the band mean.
    """
    pixels = data[(slice(None), *tile.slices(strip.start))]
    mask = valid[tile.slices(strip.start)][None].astype(np.float32)
    stacked = np.concatenate([np.where(mask > 0, pixels, 0), mask])
    pad = [(0, 0)] + [(0, s - n) for s, n in zip(size, tile.shape, strict=True)]
    if any(p for _, p in pad):
        stacked = np.pad(stacked, pad, mode="symmetric")
    return stacked


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


def segment(
    input_path: str | Path,
    model_path: str | Path,
    output: str | Path,
    options: SegmentOptions | None = None,
    *,
    card: ModelCard | None = None,
) -> Summary:
    """Segment one raster into a Zarr mask store; the whole path in one call."""
    options = options or SegmentOptions()
    source = GeoTiffSource(input_path, bands=options.bands)
    model, card = load_checkpoint(model_path, card=card)
    check_channels(card, source.channels, str(input_path), spatial_dims=len(source.shape))
    predictor = Predictor(
        model,
        card,
        device=options.device,
        batch_size=options.batch_size,
        merge=options.merge,
        tta=options.tta,
    )
    plan = make_plan(
        source.shape, card, options, pixel_size=min(source.georef.pixel_size), stride=predictor.stride
    )
    predictor.check_tile(plan.grid.tile)
    store = _open_output(output, plan, card, source, options, model_path)
    return run_blocks(BlockRunner(plan, source, predictor, store), output, options.progress)


def check_channels(card: ModelCard, channels: int, path: str, *, spatial_dims: int = 2) -> None:
    if card.spatial_dims != spatial_dims:
        raise InputError(
            f"the model is a {card.spatial_dims}-D network but {path} is {spatial_dims}-D; "
            f"use a {spatial_dims}-D model"
        )
    if card.in_channels != channels:
        raise InputError(
            f"the model takes {card.in_channels} bands but {channels} are selected from {path}; "
            f"choose {card.in_channels} with --bands"
        )


def _open_output(
    output: str | Path,
    plan: Plan,
    card: ModelCard,
    source: GeoTiffSource,
    options: SegmentOptions,
    model_path: str | Path,
) -> MaskStore:
    if options.resume and Path(output).exists():
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
        georef=source.georef,
        probabilities=options.probabilities,
        zarr_format=options.zarr_format,
        attrs=provenance(plan, card, source, model_path),
    )
    return create_store(output, layout, overwrite=options.overwrite)


def provenance(plan: Plan, card: ModelCard, source: GeoTiffSource, model_path: str | Path) -> dict[str, Any]:
    return {
        "version": gigaseg.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": str(Path(source.path).absolute()),
        "bands": source.bands,
        "model": str(Path(model_path).absolute()),
        "model_card": card.to_dict(),
        "model_card_sha256": card.digest(),
        "plan": plan.describe(),
    }


def run_blocks(runner: BlockRunner, output: str | Path, progress: bool) -> Summary:
    """Run every block not yet done, in order, then mark the store complete."""
    started = time.perf_counter()
    done = runner.store.done()
    todo = [i for i in runner.plan.blocks.indices() if not done[i]]
    total = math.prod(runner.plan.grid.shape)
    with tqdm(
        total=total, disable=not progress, unit="px", unit_scale=True, desc="segment", leave=False
    ) as bar:
        for index in todo:
            runner.run(index, on_rows=bar.update)
    runner.store.finish()
    runner.source.close()
    classes = runner.predictor.card.classes
    summary = Summary(
        str(output),
        list(classes),
        blocks=runner.plan.blocks.size,
        blocks_skipped=runner.plan.blocks.size - len(todo),
    )
    summary.counts = {name: int(n) for name, n in zip(classes, runner.counts[:-1], strict=True)}
    summary.nodata_pixels = int(runner.counts[-1])
    summary.pixels = int(runner.counts.sum())
    summary.seconds = time.perf_counter() - started
    runner.store.set_attrs(summary=asdict(summary))
    return summary

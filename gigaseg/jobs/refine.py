"""Refine a store's labels block by block: read probabilities + halo, refine, crop, write.

The refinement stage runs over the store the segment stage writes. Its blocks
are chunk-aligned boxes of their own grid (2048 pixels a side in 2-D, 128
voxels in 3-D by default), each read with a halo wide enough for the kernels
(:func:`gigaseg.refine.halo_width`), refined, cropped back to the block and
written as whole ``mask`` chunks. Every block then sets its own element of
``refine_done``, so a killed run resumes where it stopped.

Blocks run in a process pool (pydensecrf holds the GIL on one core), one worker
per core by default; the torch CRF runs in one thread of the main process,
where the model's device is. During ``segment --refine`` a block is submitted as
soon as every chunk under its block + halo has been written, so refinement of
finished rows overlaps inference of the next ones.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gigaseg.errors import IncompleteStoreError, InputError
from gigaseg.io import zarrs
from gigaseg.io.checksums import read_checked, write_checked
from gigaseg.io.lock import StoreLock
from gigaseg.io.nifti import is_nifti
from gigaseg.io.sources import Source, open_source
from gigaseg.io.store import MaskStore, open_store, store_path, verify_store
from gigaseg.jobs.lifeline import die_with_parent
from gigaseg.jobs.progress import Progress, unit_of
from gigaseg.refine import (
    RefineOptions,
    get_refiner,
    halo_width,
    labels_from,
    method_name,
    resolve_params,
    window_box,
)
from gigaseg.refine.features import Stretch, feature_bands, sample_stretch
from gigaseg.tiler import BlockGrid, Box

PROGRESS = "refine_done"
COUNTS = PROGRESS + "_counts"  # per refinement block: pixels per class, nodata last
DEFAULT_BLOCK = {2: 2048, 3: 128}
BYTES_PER_PIXEL = 400  # pydensecrf's lattice and our copies, measured: ~300 B per pixel


def source_spacing(source: Source) -> tuple[float, ...]:
    """Voxel size per axis: the source's ``spacing``, or ones where it is not positive."""
    spacing = tuple(float(s) for s in source.spacing)
    ok = len(spacing) == len(source.shape) and all(s > 0 for s in spacing)
    return spacing if ok else (1.0,) * len(source.shape)


@dataclass(frozen=True)
class RefineJob:
    """Everything a worker needs to refine one block of one store (picklable)."""

    store: str
    source: Any
    blocks: BlockGrid
    halo: tuple[int, ...]
    method: Any
    params: Any
    stretch: Stretch
    spacing: tuple[float, ...]
    feature_bands: list[int] | None

    def describe(self) -> dict[str, Any]:
        """Provenance: method, every parameter, features and their stretch."""
        params = self.params
        if hasattr(params, "__dataclass_fields__"):
            params = {k: getattr(params, k) for k in params.__dataclass_fields__}
        return {
            "method": method_name(self.method),
            "params": params if isinstance(params, dict | None) else repr(params),
            "block": list(self.blocks.block),
            "halo": list(self.halo),
            "halo_rule": "3 x the widest spatial kernel width per axis, capped",
            "feature_bands": self.feature_bands,
            "stretch": self.stretch.describe(),
            "spacing": list(self.spacing),
        }


def plan_refine(store: MaskStore, source: Source, options: RefineOptions, *, bands: list[int] | None) -> RefineJob:
    """The refinement of ``store`` with features from ``source``: blocks, halo, parameters, stretch."""
    shape = tuple(store.mask.shape)
    if tuple(source.shape) != shape:
        raise InputError(f"the image has shape {tuple(source.shape)} but the store's mask has {shape}")
    ndim = len(shape)
    spacing = source_spacing(source)
    params = resolve_params(options.method, options.params, ndim)
    halo = (options.halo,) * ndim if options.halo is not None else halo_width(params, ndim=ndim, spacing=spacing)
    block = options.block or DEFAULT_BLOCK.get(ndim, 128)
    blocks = BlockGrid.create(shape, max_block=block, chunk=tuple(store.mask.chunks))
    if blocks.chunk != tuple(store.mask.chunks):
        blocks = BlockGrid(shape, blocks.block, tuple(store.mask.chunks))
    stretch = sample_stretch(source.read, shape, options.percentiles)
    return RefineJob(
        str(Path(store_path(store)).absolute()),
        source,
        blocks,
        halo,
        options.method,
        params,
        stretch,
        spacing,
        bands,
    )


def _arrays(path: str) -> MaskStore:
    """The store at ``path`` opened for writing (a few ms), in a refinement worker."""
    return MaskStore(zarr.open_group(path, mode="r+", use_consolidated=False))


def refine_block(job: RefineJob, index: tuple[int, ...]) -> np.ndarray:
    """Refine block ``index``: write its mask chunks, mark it done, return its label counts.

    The last count is the nodata pixels. Module-level so a process pool can pickle it.
    """
    store = _arrays(job.store)
    mask, nodata = store.mask, store.nodata
    box = job.blocks.block_box(index)
    window = window_box(box, job.halo, job.blocks.shape)
    probs = read_probabilities(store, window)  # checked against its checksums
    # Validity from the probabilities, which are 0 on nodata and never rewritten: the mask in the
    # halo is being rewritten by the neighbouring blocks' tasks while this one reads.
    valid: np.ndarray = np.any(probs, axis=0)
    data, _ = job.source.read(window)
    refined = get_refiner(job.method)(
        probs, job.stretch(data), valid, params=job.params, origin=window.start, spacing=job.spacing
    )
    inner = (slice(None), *box.slices(window.start))
    labels = labels_from(refined[inner], valid[inner[1:]], nodata=nodata, dtype=mask.dtype)
    write_checked(mask, store.mask_crc, box, labels)
    classes = probs.shape[0]
    counts = np.bincount(np.where(valid[inner[1:]], labels, classes).ravel(), minlength=classes + 1)
    zarrs.array(store.group, COUNTS)[index] = counts
    zarrs.array(store.group, PROGRESS)[index] = 1
    return counts


def read_probabilities(store: MaskStore, box: Box) -> np.ndarray:
    """``(K, *box)`` float32 probabilities, checked; uint8 stores hold ``p * 255``."""
    if store.probabilities is None:
        raise InputError(f"{store_path(store)} has no probabilities to refine")
    values = read_checked(store.probabilities, store.probabilities_crc, box, "probabilities")
    if values.dtype == np.uint8:
        return values.astype(np.float32) * np.float32(1 / 255)
    return values.astype(np.float32)


def default_workers(job: RefineJob) -> int:
    """One worker per core, fewer when the machine's memory would not hold their windows."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    window = math.prod(b + 2 * h for b, h in zip(job.blocks.block, job.halo, strict=True))
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return cores
    return max(1, min(cores, available // (window * BYTES_PER_PIXEL)))


def make_executor(job: RefineJob, workers: int | None) -> Executor:
    """Processes for pydensecrf and SLIC (they hold the GIL); one thread for the torch CRF."""
    if job.method == "crf-torch":
        return ThreadPoolExecutor(1, thread_name_prefix="gigaseg-refine")
    context = multiprocessing.get_context("spawn")  # never fork a process that runs torch
    return ProcessPoolExecutor(
        workers or default_workers(job), mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    )  # workers end with this process, even when it is killed (gigaseg.jobs.lifeline)


class RefineStage:
    """Submit each block once the chunks under its block + halo are written; collect counts."""

    def __init__(
        self, job: RefineJob, store: MaskStore, done: zarr.Array, *, workers: int | None, progress: bool
    ) -> None:
        self.job = job
        self.store = store
        self.progress = progress
        self.executor = make_executor(job, workers)
        chunks = job.blocks.chunk
        self.written = np.zeros([math.ceil(n / c) for n, c in zip(job.blocks.shape, chunks, strict=True)], bool)
        finished = zarrs.read(done) > 0
        self.pending = {i: self._chunk_slices(self._window(i)) for i in job.blocks.indices() if not finished[i]}
        self.futures: dict[Future, tuple[int, ...]] = {}
        self._mark_segmented()

    def _mark_segmented(self) -> None:
        """Chunks of segment blocks already done (a resumed or finished store) are written."""
        grid, done = segment_blocks(self.store), self.store.done()
        if grid is None:
            self.mark_all_written()
            return
        for index in grid.indices():
            if done[index]:
                self.mark_written(grid.block_box(index))

    def _window(self, index: tuple[int, ...]) -> Box:
        return window_box(self.job.blocks.block_box(index), self.job.halo, self.job.blocks.shape)

    def _chunk_slices(self, box: Box) -> tuple[slice, ...]:
        chunks = self.job.blocks.chunk
        return tuple(slice(a // c, -(-b // c)) for a, b, c in zip(box.start, box.stop, chunks, strict=True))

    def mark_written(self, box: Box) -> None:
        """The segment stage wrote ``box`` (whole chunks): submit the blocks it completed."""
        self.written[self._chunk_slices(box)] = True
        ready = [i for i, cells in self.pending.items() if self.written[cells].all()]
        for index in ready:
            del self.pending[index]
            self.futures[self.executor.submit(refine_block, self.job, index)] = index

    def mark_all_written(self) -> None:
        self.mark_written(Box((0,) * self.written.ndim, tuple(self.job.blocks.shape)))

    def abort(self) -> None:
        """Stop: cancel the blocks not started (a killed run resumes them)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def finish(self) -> np.ndarray:
        """Wait for every block; return the label counts (last: nodata) of the whole refined store."""
        self.mark_all_written()
        blocks = self.job.blocks
        total = sum(blocks.block_box(i).size for i in blocks.indices())
        # Per refined block (2048 pixels a side by default). Blocks refined by an earlier run, or
        # already while segment ran, count at start: the rate and ETA are those of what is left.
        early = {f for f in self.futures if f.done()}
        left = sum(blocks.block_box(i).size for f, i in self.futures.items() if f not in early)
        unit = unit_of(len(blocks.shape))
        try:
            with Progress(total, desc="refine", unit=unit, enabled=self.progress, initial=total - left) as bar:
                for future in as_completed(self.futures):
                    future.result()
                    if future not in early:
                        bar.advance(blocks.block_box(self.futures[future]).size)
        finally:
            self.executor.shutdown(cancel_futures=True)
        counts = zarrs.read(zarrs.array(self.store.group, COUNTS)).reshape(-1, len(self.store.classes) + 1).sum(axis=0)
        names = dict(zip([*self.store.classes, "nodata"], map(int, counts), strict=True))
        self.store.set_attrs(refine={**self.store.attrs.get("refine", {}), "complete": True, "counts": names})
        return counts


def start_refine(
    store: MaskStore, input_path: str | Path, options: RefineOptions, *, bands: list[int] | None
) -> RefineStage:
    """Prepare the refinement of ``store`` from the image at ``input_path`` and return the stage.

    ``bands`` are the file bands feeding the model; the feature bands follow
    ``options.feature_bands``, else the model card's red/green/blue, else the first three.
    With ``options.resume`` the blocks already refined are kept, except those whose
    block + halo touches a segment block that is not done (it will be rewritten).
    """
    chosen = feature_bands(bands or [1, 2, 3], band_names=_card_band_names(store), explicit=options.feature_bands)
    source = open_source(input_path, bands=None if is_nifti(input_path) else chosen)  # a volume feeds all of it
    job = plan_refine(store, source, options, bands=chosen)
    record = job.describe()
    stored = store.attrs.get("refine")
    if options.resume and stored is not None and _comparable(stored) != _comparable(record):
        raise InputError(
            f"cannot resume refinement of {job.store}: it was started with {_comparable(stored)}, "
            f"not {_comparable(record)}; use overwrite, or refine it again without resuming, to start again",
            parameters=("overwrite",),
        )
    done = store.progress_array(PROGRESS, job.blocks.counts, reset=not options.resume)
    store.progress_array(COUNTS, job.blocks.counts, reset=not options.resume, width=len(store.classes) + 1)
    if options.resume:
        _forget_stale(job, store, done)
    store.reopen(refine={**record, "complete": False})
    return RefineStage(job, store, done, workers=options.workers, progress=options.progress)


def check_resume(store: MaskStore, options: RefineOptions | None) -> None:
    """Refuse to resume a store whose refinement is unfinished without refining it,
    or to refine on resume a store that keeps no probabilities."""
    if options is not None and store.probabilities is None:
        raise InputError(
            f"{store_path(store)} keeps no probabilities, which refine needs; start again with overwrite and refine",
            parameters=("refine", "overwrite"),
        )
    stored = store.attrs.get("refine")
    if options is None and stored is not None and not stored.get("complete"):
        raise InputError(
            f"{store_path(store)} was started with refinement by {stored.get('method')}; "
            "resume it with the same refine options",
            parameters=("refine",),
        )


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(record, default=str))
    return {k: v for k, v in plain.items() if k not in ("complete", "counts")}


def _card_band_names(store: MaskStore) -> list[str] | None:
    return (store.attrs.get("model_card") or {}).get("band_names")


def _forget_stale(job: RefineJob, store: MaskStore, done: zarr.Array) -> None:
    """Un-mark refined blocks whose window overlaps a segment block that will run again."""
    segment_done = store.done()
    grid = segment_blocks(store)
    if grid is None or segment_done.all():
        return
    stale = [grid.block_box(i) for i in grid.indices() if not segment_done[i]]
    flags = zarrs.read(done)
    for index in job.blocks.indices():
        window = window_box(job.blocks.block_box(index), job.halo, job.blocks.shape)
        if flags[index] and any(window.intersection(b) for b in stale):
            done[index] = 0


def segment_blocks(store: MaskStore) -> BlockGrid | None:
    plan = store.attrs.get("plan")
    if not plan:
        return None
    return BlockGrid(tuple(plan["shape"]), tuple(plan["block"]), tuple(plan["chunk"]))


def refine(
    store_path_: str | Path, image: str | Path, options: RefineOptions | None = None
) -> tuple[MaskStore, np.ndarray, float]:
    """Refine an existing store's labels from its probabilities and ``image``.

    Returns the store, the label counts of the refined blocks (last: nodata) and
    the seconds it took. The store is incomplete while this runs and complete after.
    """
    options = options or RefineOptions()
    started = time.perf_counter()
    checked = open_store(store_path_).has_checksums  # says clearly when it is not a gigaseg store
    with StoreLock(store_path_):
        if checked:
            verify_store(store_path_)  # refine only what was written as it was written
        store = MaskStore(zarr.open_group(str(store_path_), mode="r+", use_consolidated=False))
        check_refinable(store, store_path_)
        bands = store.attrs.get("bands") or list(range(1, 4))
        stage = start_refine(store, image, options, bands=bands)
        counts = stage.finish()
        store.finish()
    return store, counts, time.perf_counter() - started


def check_refinable(store: MaskStore, path: str | Path) -> None:
    if store.probabilities is None:
        raise InputError(
            f"{path} keeps no class scores for refinement; segment again with probabilities 'uint8' "
            "(or with refine, which keeps them)",
            parameters=("probabilities", "refine"),
        )
    done = store.done()
    if not done.all():
        raise IncompleteStoreError(
            f"{path} is not fully segmented ({int(done.sum())} of {done.size} blocks); "
            "finish the segmentation with resume first",
            parameters=("resume",),
        )

"""Segment one scene: plan -> per block (read + halo, infer, blend, write) -> finish.

The public :func:`segment` runs the whole path in one call; the block engine is
:mod:`gigaseg.jobs.engine`, the scene's set-up :mod:`gigaseg.jobs.scene`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gigaseg.errors import DamagedStoreError, GigasegError, InputError, OutputExistsError
from gigaseg.io.export import export_mask
from gigaseg.io.location import exists, remove_tree
from gigaseg.io.lock import StoreLock
from gigaseg.io.store import MaskStore, check_output_dir, open_store, store_path
from gigaseg.jobs.engine import BlockRunner
from gigaseg.jobs.options import SegmentOptions
from gigaseg.jobs.outputs import check_file_output, output_format, staging_store
from gigaseg.jobs.plan import Plan
from gigaseg.jobs.preflight import check_fits
from gigaseg.jobs.progress import Progress, unit_of
from gigaseg.jobs.scene import (
    SceneSpec,
    open_runner,
    plan_scene,
)
from gigaseg.jobs.volume import ModelInput
from gigaseg.models import ModelCard
from gigaseg.models.formats import card_override, register_module


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
    unit: str = "px"  # what ``pixels`` counts: "voxels" for volumes (set by finish_scene)

    @property
    def mpix_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        rate = "Mvoxels/s" if self.unit == "voxels" else "Mpix/s"
        return (
            f"{self.output}: {self.pixels} {self.unit} in {self.seconds:.1f} s "
            f"({self.mpix_per_s:.2f} {rate}); {counts}; nodata {self.nodata_pixels}"
        )


def segment(
    input_path: str | Path,
    model_path: str | Path | nn.Module,
    output: str | Path,
    options: SegmentOptions | None = None,
    *,
    card: ModelCard | dict[str, Any] | str | Path | None = None,
) -> Summary:
    """Segment one raster or volume into a Zarr mask store; the whole path in one call.

    ``model_path`` is a model in any format gigaseg reads (a checkpoint, a state
    dict, TorchScript, ``.pt2``, ONNX, an smp folder) or an ``nn.Module``;
    ``card`` (a :class:`ModelCard`, a dict of some keys, or a JSON file) says
    what the model does not, key by key over its own card.
    An ``output`` named ``.tif``/``.tiff`` (or ``.nii``/``.nii.gz``)
    is a file: the scene is
    segmented into a staging store beside it and exported (:mod:`gigaseg.jobs.outputs`).
    """
    options = options or SegmentOptions()
    if isinstance(model_path, nn.Module):
        model_path = register_module(model_path)
    elif not isinstance(model_path, str | Path):
        raise InputError(f"model must be a path or an nn.Module, not a {type(model_path).__name__}")
    keys = card_override(card)
    if output_format(str(output)) != "zarr":
        return segment_to_file(input_path, model_path, str(output), options, card=keys)
    spec = SceneSpec(str(input_path), str(model_path), str(output), options, keys)
    existed = exists(output)
    planned = plan_checked(spec)
    with StoreLock(output):
        try:
            runner = open_runner(spec, create=True, planned=planned)
            refine = refine_stage(runner, input_path, options)
            return run_blocks(runner, output, options.progress, refine=refine)
        except BaseException:
            if not existed or options.overwrite:
                discard_if_empty(output)
            raise


def segment_to_file(
    input_path: str | Path,
    model_path: str | Path,
    output: str,
    options: SegmentOptions,
    *,
    card: dict[str, Any] | None = None,
) -> Summary:
    """Segment into the staging store beside ``output``, export it to ``output``, remove the store.

    An interrupted run leaves the staging store; ``resume`` finishes it and exports.
    """
    if check_file_output(output, options, str(input_path)):
        raise OutputExistsError(
            f"output {output} is complete; pass overwrite to write it again", parameters=("overwrite",)
        )
    staging = staging_store(output)
    try:
        summary = segment(input_path, model_path, staging, options, card=card)
    except GigasegError as e:  # name the file asked for; the staging store is where it stands
        message = str(e).replace(staging, f"{output} (staged in {staging})", 1)
        raise type(e)(message, parameters=e.parameters) from None
    export_mask(staging, output, overwrite=True, progress=options.progress)
    remove_tree(staging)
    summary.output = output
    return summary


def plan_checked(spec: SceneSpec) -> tuple[ModelInput, Plan]:
    """:func:`plan_scene`, then every check that needs no output: memory and the output's directory.

    Everything a run can refuse is refused here, before a store exists.
    """
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
            remove_tree(output)  # a directory, or every object under a prefix on object storage


def refine_stage(runner: BlockRunner, input_path: str | Path, options: SegmentOptions) -> Any:
    """The refinement stage of ``options.refine`` over the runner's store (None without one)."""
    from gigaseg.jobs.refine import check_resume, start_refine

    if options.resume:
        check_resume(runner.store, options.refine)
    if not options.refine:
        return None
    refine = replace(options.refine, resume=options.resume, progress=options.progress)
    stage = start_refine(runner.store, input_path, refine, bands=getattr(runner.source, "bands", None))
    runner.on_write = stage.mark_written
    return stage


def run_blocks(runner: BlockRunner, output: str | Path, progress: bool, *, refine: Any = None) -> Summary:
    """Run every block not yet done, in order, then mark the store complete.

    With a ``refine`` stage (:class:`gigaseg.jobs.refine.RefineStage`) the store is
    complete only once it has refined every block; the counts are then the refined ones.
    """
    started = time.perf_counter()
    todo = pending_blocks(runner.store, runner.plan)
    total = math.prod(runner.plan.blocks.shape)
    left = sum(runner.plan.blocks.block_box(index).size for index in todo)
    unit = unit_of(len(runner.plan.blocks.shape))
    # Advanced by the runner as each tile row's pixels are final (all their tiles in), so a
    # one-block scene moves row by row; blocks done by an earlier run count at start.
    with Progress(total, desc="segment", unit=unit, enabled=progress, initial=total - left) as bar:
        runner.on_rows = bar.advance
        try:
            for index in todo:
                runner.run(index)
        except BaseException:
            if refine is not None:
                refine.abort()
            raise
        finally:
            runner.on_rows = None
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
    if counts is None:
        raise DamagedStoreError(f"{store_path(store)} has lost its per-block counts; rerun with resume")
    summary.counts = {name: int(n) for name, n in zip(summary.classes, counts[:-1], strict=True)}
    summary.nodata_pixels = int(counts[-1])
    summary.pixels = int(counts.sum())
    summary.seconds = seconds
    summary.unit = "voxels" if store.mask.ndim == 3 else "px"
    store.finish(summary=asdict(summary))
    return summary

"""``--dry-run``: the plan of a scene, what a run will hold in memory, what exists."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import torch

from gigaseg.errors import InputError, OutputExistsError, StoreLockedError
from gigaseg.io.location import exists
from gigaseg.io.lock import describe, lock_path, read_lock, stale_reason
from gigaseg.io.sources import ReadsNative, Source
from gigaseg.io.store import PROBABILITY_DTYPES, is_store, open_store
from gigaseg.jobs.engine import default_readers
from gigaseg.jobs.fingerprint import check_fingerprint, fingerprint
from gigaseg.jobs.memory import Footprint, footprint, format_bytes, gpu_batch_size
from gigaseg.jobs.plan import Plan
from gigaseg.jobs.scene import SceneSpec, pixel_options, plan_scene
from gigaseg.jobs.volume import ModelInput
from gigaseg.models.inference import resolve_device
from gigaseg.tiler import halo_overhead
from gigaseg.tiler.regrid import PIECE_BYTES


def scene_footprint(spec: SceneSpec) -> tuple[str, Footprint]:
    """The plan's one-line summary and its predicted memory on the device the run will use.

    The model is loaded on the CPU (a dry run takes no GPU memory); batch size and
    reader threads are those the run would choose on its device.
    """
    fed, plan = dry_plan(spec)
    return predict_footprint(spec, fed, plan, resolve_device(spec.options.device))


def dry_plan(spec: SceneSpec) -> tuple[ModelInput, Plan]:
    """The scene planned from headers only (nothing decompressed, nothing read), the model on the CPU."""
    return plan_scene(replace(spec, options=replace(spec.options, device="cpu")), dry=True)


def predict_footprint(spec: SceneSpec, fed: ModelInput, plan: Plan, device: torch.device) -> tuple[str, Footprint]:
    """:func:`scene_footprint` of a scene already planned."""
    source, card = fed.source, fed.predictor.card
    gpu = device.type == "cuda"
    band = plan.band_bytes(card.num_classes)
    batch = spec.options.batch_size or fed.predictor.batch_size
    if gpu and not spec.options.batch_size:
        free, _ = torch.cuda.mem_get_info(device)
        batch = gpu_batch_size(
            free=free, tile=plan.grid.tile, channels=source.channels, classes=card.num_classes, band=band
        )
    batch = min(batch, plan.grid.size)
    stored = spec.options.probabilities or ("uint8" if spec.options.refine else None)
    memory = footprint(
        tile=plan.grid.tile,
        block=plan.region_shape(),
        chunk=plan.band_depth() - plan.grid.tile[0],
        channels=source.channels,
        classes=card.num_classes,
        batch=batch,
        params=sum(p.numel() for p in fed.predictor.model.parameters()),
        gpu=gpu,
        readers=spec.options.readers or default_readers(device),
        pixel_bytes=strip_pixel_bytes(source),
        probability_bytes=np.dtype(PROBABILITY_DTYPES[stored]).itemsize if stored else 0,
        tta=spec.options.tta,
        back=back_bytes(
            plan, card.num_classes, channels=source.channels, readers=spec.options.readers or default_readers(device)
        ),
    )
    overhead = halo_overhead(plan.grid, plan.blocks, plan.regrid.to_model if plan.regrid else None)
    work = plan.grid.size * overhead * math.prod(plan.grid.tile) / 1e6
    unit = "Mvoxels" if len(plan.grid.shape) == 3 else "Mpix"
    summary = (
        f"{spec.input}: shape {list(plan.blocks.shape)}{model_grid(fed, plan)}, {card.num_classes} classes, "
        f"{plan.blocks.size} blocks of "
        f"{list(plan.blocks.block)}, {plan.grid.size} tiles of {list(plan.grid.tile)} (x{overhead:.3f} with halos, "
        f"{work:.1f} {unit} of model work), batch {batch} on {device.type}; peak per worker {memory.describe()}"
    )
    return summary, memory


def back_bytes(plan: Plan, classes: int, *, channels: int, readers: int) -> int:
    """On a model's own grid: the rows brought back at once (a piece of float32 probabilities, with the
    interpolation's temporaries: about four of them) and the labels of the chunk they fill; and each
    reader's scene rows under a tile row, read and resampled (float32 values and validity, and two
    stages of the resampling)."""
    if plan.regrid is None:
        return 0
    row = math.prod(plan.blocks.block[1:])
    piece = max(PIECE_BYTES, 4 * classes * row)  # at least one row
    regrid = plan.regrid
    scene_rows = math.ceil(plan.grid.tile[0] * regrid.shape[0] / regrid.model_shape[0]) + 2
    reads = (readers + 1) * 4 * scene_rows * row * (4 * channels + 1)
    return 4 * piece + 2 * plan.blocks.chunk[0] * row + reads


def model_grid(fed: ModelInput, plan: Plan) -> str:
    """``, model grid [...] (... mm)``: the voxels the model sees, where they are not the scene's."""
    if plan.regrid is None:
        return ""
    unit = getattr(fed.source, "unit", "mm")
    spacing = " x ".join(f"{s:g}" for s in fed.source.spacing)
    return f" seen by the model as {list(plan.regrid.model_shape)} ({spacing} {unit})"


def check_fits(spec: SceneSpec, fed: ModelInput, plan: Plan) -> None:
    """Refuse, before anything is written, a run whose predicted peak exceeds the memory there is.

    A tile of 100000^2 pixels, or metres read as degrees, would otherwise end
    in a MemoryError after the store exists.
    """
    device = fed.predictor.device
    _, memory = predict_footprint(spec, fed, plan, device)
    have = psutil.virtual_memory().total
    if memory.host > have:
        raise InputError(
            f"{spec.input}: a run with tiles of {list(plan.grid.tile)} and blocks of {list(plan.blocks.block)} "
            f"would need ~{format_bytes(memory.host)} of memory, more than the {format_bytes(have)} here; "
            "a smaller tile, block or batch size"
        )
    if device.type == "cuda" and memory.device > torch.cuda.get_device_properties(device).total_memory:
        raise InputError(
            f"{spec.input}: a run with tiles of {list(plan.grid.tile)} would need ~{format_bytes(memory.device)} "
            f"of GPU memory, more than {device} has; a smaller tile, block or batch size"
        )


def strip_pixel_bytes(source: Source) -> int:
    """Bytes per value of the strips the pipeline reads: 8- and 16-bit integers stay as they are."""
    native = getattr(source, "dtype", None)
    if native is None or not isinstance(source, ReadsNative):
        return 4
    return int(native.itemsize) if native.kind in "iu" and native.itemsize <= 2 else 4


def describe_scene(spec: SceneSpec) -> str:
    """The dry run's line for one scene; raises what the run would refuse, output included."""
    fed, plan = dry_plan(spec)
    summary, _ = predict_footprint(spec, fed, plan, resolve_device(spec.options.device))
    check_output(spec, fed, plan)
    return f"{summary}; output {spec.output}: {existing(spec.output)}"


# What a dry run cannot know as the run will: the device it picks, and statistics the
# run fits to the pixels (a dry run reads headers only).
DRY_UNKNOWNS = ("options.device", "options.precision", "options.model_input")


def check_output(spec: SceneSpec, fed: ModelInput, plan: Plan) -> None:
    """What the run would refuse about its output: an existing store without --overwrite or
    --resume, a resume of a store started otherwise, a store another process writes."""
    output, options = spec.output, spec.options
    if not exists(output):
        return
    if not (options.overwrite or options.resume):
        raise OutputExistsError(
            f"output {output} exists; pass overwrite to replace it or resume to finish it",
            parameters=("overwrite", "resume"),
        )
    holder = read_lock(lock_path(output))
    if holder is not None and stale_reason(lock_path(output), holder) is None:
        raise StoreLockedError(f"{output} is being written by {describe(holder)}")
    if options.resume and is_store(output):
        folds = fed.predictor.card.folds
        current = fingerprint(spec.input, spec.model, pixel_options(plan, fed, options), folds=folds)
        check_fingerprint(output, open_store(output).attrs.get("fingerprint"), current, ignore=DRY_UNKNOWNS)


def existing(output: str | Path) -> str:
    if not exists(output):
        return "new"
    if not is_store(output):
        return "exists, not a store"
    store = open_store(output)
    done = store.done()
    return "complete" if store.complete else f"incomplete, {int(done.sum())}/{done.size} blocks done"

"""One scene set up for its block tasks: its spec, model, input, plan and output store."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gigaseg
from gigaseg.errors import InputError
from gigaseg.io.checksums import chunk_box
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.io.location import exists
from gigaseg.io.sources import Source, open_source
from gigaseg.io.stac import is_stac
from gigaseg.io.store import (
    MaskStore,
    StoreLayout,
    create_store,
    cut_short,
    open_store,
    remove_partials,
    restore_bookkeeping,
    store_path,
)
from gigaseg.jobs.engine import BlockRunner, probability_dtype
from gigaseg.jobs.fingerprint import check_fingerprint, fingerprint
from gigaseg.jobs.memory import cpu_batch_size, gpu_batch_size
from gigaseg.jobs.options import SegmentOptions, cache_bytes, check_options
from gigaseg.jobs.plan import Plan, length_spacing, make_plan, merge_of
from gigaseg.jobs.volume import ModelInput, model_input
from gigaseg.models import ModelCard, Predictor
from gigaseg.models.formats import open_model
from gigaseg.models.probe import check_graph


@dataclass(frozen=True)
class SceneSpec:
    """One scene's job: everything a block task needs, small and picklable."""

    input: str
    model: str
    output: str
    options: SegmentOptions = SegmentOptions()
    card: dict[str, Any] | None = None  # card keys over the model's own (a whole card for a plain state dict)
    export: str | None = None  # a file (COG, NIfTI) the finished store is exported to, then removed

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
        store = open_output(spec, plan, fed)
    else:
        store = open_store(spec.output, mode="r+")
    return BlockRunner(plan, fed.source, fed.predictor, store, normalize=fed.normalize, readers=spec.options.readers)


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
        spatial_dims=None if options.slice_axis is not None else card.spatial_dims,  # a (C, H, W) .npy
        assets=options.assets,
        band_names=card.band_names,  # a STAC item's assets are matched to them
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
        order=fed.order,
        regrid=fed.regrid,
    )
    fed.predictor.check_tile(plan.grid.tile)
    largest = tuple(min(t, n) for t, n in zip(plan.grid.tile, plan.grid.shape, strict=True))
    model_tile = getattr(fed.predictor, "model_shape", lambda tile: tile)(largest)
    check_graph(predictor, spec.model, model_tile)  # the card and the tile against the graph, one forward
    if options.batch_size is None and predictor.device.type == "cpu":
        predictor.batch_size = cpu_batch_size(predictor.batch_size, tile=plan.grid.tile, classes=card.num_classes)
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


_PREDICTORS: dict[str, Predictor] = {}


def load_predictor(spec: SceneSpec) -> Predictor:
    """The scene's model, loaded once per process and reused by every block task."""
    o = spec.options
    key = json.dumps(
        [spec.model, spec.card, o.configuration, o.device, o.batch_size, o.merge, o.tta, o.deterministic], default=str
    )
    if key not in _PREDICTORS:
        loaded = open_model(spec.model, card=spec.card, configuration=o.configuration)
        _PREDICTORS.clear()  # one model per worker at a time
        predictor = Predictor(
            loaded.module,
            loaded.card,
            device=o.device,
            batch_size=o.batch_size,
            merge=merge_of(o, loaded.card),
            tta=o.tta,
            deterministic=o.deterministic,
        )
        card = loaded.card  # a first check before the input is opened (a .nii.gz decompressed)
        check_graph(predictor, spec.model, card.tile_shape(), planned=False)
        _PREDICTORS[key] = predictor
    return _PREDICTORS[key]


def check_channels(card: ModelCard, channels: int, path: str) -> None:
    """Bands fed must be the bands the model takes (dimensions: ``volume.check_dims``)."""
    if card.in_channels != channels:
        choose = "assets" if is_stac(path) else "bands"  # a STAC item's bands are its assets
        raise InputError(
            f"the model takes {card.in_channels} channels but {channels} are selected from {path}; "
            f"choose {card.in_channels} with {choose}",
            parameters=(choose,),
        )


def open_output(spec: SceneSpec, plan: Plan, fed: ModelInput) -> MaskStore:
    """Create the store; with resume, reopen it if it was started with this very input, model and options."""
    options, card = spec.options, fed.predictor.card
    current = fingerprint(spec.input, spec.model, pixel_options(plan, fed, options), folds=card.folds)
    if options.resume and exists(spec.output) and not cut_short(spec.output):  # a directory, or a prefix
        from gigaseg.jobs.refine import check_resume  # refinement builds on this module

        remove_partials(spec.output)
        store = open_store(spec.output, mode="r+")
        check_fingerprint(spec.output, store.attrs.get("fingerprint"), current)
        check_resume(store, options.refine)  # before anything in the store changes
        warn_kept_layout(store, options)
        if restore_bookkeeping(spec.output):
            store = open_store(spec.output, mode="r+")
        store.restore_coordinates()  # a deleted coordinate chunk: its values follow from the georeferencing
        repair(store, plan)
        return store
    layout = StoreLayout(
        shape=plan.blocks.shape,
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
    corners = [chunk_box(d.chunk, plan.blocks.chunk, plan.blocks.shape).start for d in damaged]
    found = {tuple(a // b for a, b in zip(c, plan.blocks.block, strict=True)) for c in corners}
    blocks = sorted(found | set(unreadable))
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
        "input": source.path
        if "://" in source.path or source.path.startswith("/vsi")
        else str(Path(source.path).absolute()),
        **source.describe(),
        "model": str(model_path) if str(model_path).startswith("module:") else str(Path(model_path).absolute()),
        "model_card": card.to_dict(),
        "model_card_sha256": card.digest(),
        "plan": plan.describe(),
    }

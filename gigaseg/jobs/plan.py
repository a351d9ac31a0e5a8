"""``gigaseg run --dry-run``: the plan of a scene, its predicted memory, what exists."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from gigaseg.io.store import is_store, open_store
from gigaseg.jobs.segment import Plan, SceneSpec, load_predictor, plan_scene
from gigaseg.tiler import halo_overhead

# Rough activation memory of a small encoder-decoder per input pixel in a batch
# (float32, a few 64-channel feature maps alive at once); an estimate, not a bound.
ACTIVATION_BYTES_PER_PIXEL = 64 * 4 * 4


def predicted_memory(plan: Plan, *, channels: int, classes: int, batch: int, params: int) -> dict[str, int]:
    """Peak bytes per worker on the host and on the GPU, from the plan's sizes."""
    tile = math.prod(plan.grid.tile)
    width = math.prod(plan.blocks.block[1:])
    tile_width = math.prod(t + b for t, b in zip(plan.grid.tile[1:], plan.blocks.block[1:], strict=True))
    band = plan.grid.tile[0] + plan.blocks.chunk[0]
    row_tiles = math.prod(
        math.ceil(b / s) + 1 for b, s in zip(plan.blocks.block[1:], plan.grid.stride[1:], strict=True)
    )
    stitcher = band * width * (classes * 4 + 1)  # float32 scores, bool validity
    strips = 3 * plan.grid.tile[0] * tile_width * (channels * 4 + 1)  # in use, next, being read (float32 at most)
    row = row_tiles * tile * (channels + 1 + classes) * 4
    model = params * 4 + batch * tile * ACTIVATION_BYTES_PER_PIXEL
    return {"host": stitcher + strips + row + model, "gpu": model}


def describe_scene(spec: SceneSpec) -> str:
    cpu = replace(spec, options=replace(spec.options, device="cpu"))
    fed, plan = plan_scene(cpu)
    source, card = fed.source, fed.predictor.card
    params = sum(p.numel() for p in load_predictor(cpu).model.parameters())
    memory = predicted_memory(
        plan, channels=source.channels, classes=card.num_classes, batch=fed.predictor.batch_size, params=params
    )
    overhead = halo_overhead(plan.grid, plan.blocks)
    work = plan.grid.size * overhead * math.prod(plan.grid.tile) / 1e6
    return (
        f"{spec.input}: shape {list(plan.grid.shape)}, {plan.blocks.size} blocks of {list(plan.blocks.block)}, "
        f"{plan.grid.size} tiles of {list(plan.grid.tile)} (x{overhead:.3f} with halos, {work:.1f} Mpix of "
        f"model work), peak per worker ~{memory['host'] / 2**20:.0f} MB host / "
        f"~{memory['gpu'] / 2**20:.0f} MB GPU; output {spec.output}: {existing(spec.output)}"
    )


def existing(output: str | Path) -> str:
    if not Path(output).exists():
        return "new"
    if not is_store(output):
        return "exists, not a store"
    store = open_store(output)
    done = store.done()
    return "complete" if store.complete else f"incomplete, {int(done.sum())}/{done.size} blocks done"

"""The GPU cases, ``python -m bench --device cuda``: gigaseg's device path against the pure forward and MONAI.

Each case compares engines measured in the same run (fresh worker processes,
interleaved, best of ``--repeats``). On a machine without CUDA, ``--quick``
runs the same cases at tiny sizes on the CPU (a dry run of the script, not a
measurement); full sizes refuse to run there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import inputs
from bench.cases import Context, Row, _ratio, _speed_rows
from bench.measure import Measurement


def _device(ctx: Context) -> str:
    return ctx.settings.device


def _note(ctx: Context) -> str:
    return "" if _device(ctx).startswith("cuda") else "DRY RUN on the CPU, not a GPU measurement"


def _dry_run(ctx: Context, scene: str, model: str, **options: Any) -> dict[str, Any]:
    params = {"input": scene, "model": model, "out": ctx.output("dry.zarr"), "device": _device(ctx), **options}
    return ctx.measure_once("dry_run", params)


def _tiles(scene: str, model: str) -> int:
    from bench.engines import planned_tiles

    return planned_tiles(scene, model)


def efficiency(ctx: Context) -> list[Row]:
    """gigaseg (GeoTIFF on disk to Zarr) against the pure bf16 forward on the device, two U-Nets."""
    s, device = ctx.settings, _device(ctx)
    side = s.side(16384, 1024)
    scene = str(inputs.tiled_scene(side, bands=4, data=s.data))
    rows = []
    for name, label, target in (("bundled", "bundled U-Net", 0.7), ("resnet34", "smp U-Net resnet34, 8 classes", 0.85)):
        model = str(inputs.gpu_model(name, data=s.data))
        plan = _dry_run(ctx, scene, model)
        batch = plan.get("batch", 4)
        found = ctx.measure(
            {
                "gigaseg": ("gigaseg", _segment(ctx, scene, model, "g11.zarr")),
                "forward": (
                    "forward",
                    {
                        "input": scene,
                        "model": model,
                        "batch_size": batch,
                        "tiles": _tiles(scene, model),
                        "device": device,
                    },
                ),
            }
        )
        g = found["gigaseg"]
        ratio = _ratio(g, found["forward"])
        rows += _speed_rows("11", found, f"{label} {side}^2")
        opened = g.extra.get("open_seconds")
        if opened is not None and g.seconds < float("inf"):
            whole = g.pixels / 1e6 / (g.seconds + opened)
            rows.append(
                Row(
                    "11",
                    f"{label}: with opening (model load, store, warm-up)",
                    whole,
                    "Mpix/s",
                    note=f"opening took {opened:.2f} s",
                )
            )
        rows.append(
            Row(
                "11",
                f"{label}: segment / forward",
                ratio,
                target=f">= {target}",
                met=_at_least(ratio, target),
                note=f"batch {batch}; {_waits(g)} {_note(ctx)}".strip(),
            )
        )
        if name == "bundled":
            mpix = g.mpix_per_s or None
            rows.append(
                Row("11", f"{label}: GeoTIFF -> Zarr", mpix, "Mpix/s", target=">= 150", met=_at_least(mpix, 150))
            )
        rows.append(_memory_row("11", label, g, plan))
    return rows


def versus_monai(ctx: Context) -> list[Row]:
    """gigaseg (disk to disk) against MONAI's sliding window with the scene already in GPU memory."""
    s, device = ctx.settings, _device(ctx)
    side = s.side(8192, 512)
    scene = str(inputs.tiled_scene(side, bands=4, data=s.data))
    model = str(inputs.gpu_model("resnet34", data=s.data))
    batch = _dry_run(ctx, scene, model).get("batch", 4)
    found = ctx.measure(
        {
            "gigaseg": ("gigaseg", _segment(ctx, scene, model, "g12.zarr")),
            "monai": ("monai", {"input": scene, "model": model, "batch_size": batch, "device": device}),
        }
    )
    ratio = _ratio(found["gigaseg"], found["monai"])
    rows = _speed_rows("12", found, f"resnet34 U-Net {side}^2")
    rows.append(
        Row(
            "12",
            "gigaseg (disk -> Zarr) / MONAI (scene in GPU memory)",
            ratio,
            target=">= 1.0",
            met=_at_least(ratio, 1.0),
            note=f"batch {batch} both; {_note(ctx)}".strip(),
        )
    )
    return rows


def volume(ctx: Context) -> list[Row]:
    """A 512 x 512 x 400 CT-like volume, 3-D U-Net: gigaseg against MONAI, both on the GPU."""
    from bench.cases import volume_arch

    s, device = ctx.settings, _device(ctx)
    arch, kwargs = volume_arch()
    shape = (48, 48, 40) if s.quick else (512, 512, 400)
    tile, overlap = (32, 8) if s.quick else (96, 16)
    path = str(inputs.volume(shape, data=s.data))
    model = str(inputs.model3d(arch, kwargs, tile=tile, overlap=overlap, data=s.data))
    batch = _dry_run(ctx, path, model).get("batch", 2)
    found = ctx.measure(
        {
            "gigaseg": ("gigaseg", _segment(ctx, path, model, "g13.zarr")),
            "monai": ("monai", {"input": path, "model": model, "batch_size": batch, "device": device}),
        },
        repeats=1,
    )
    ratio = _ratio(found["gigaseg"], found["monai"])
    rows = _speed_rows("13", found, f"3-D {arch}")
    rows.append(
        Row(
            "13",
            "3-D: gigaseg (NIfTI -> Zarr) / MONAI (volume in GPU memory)",
            ratio,
            target="(info)",
            note=f"{'x'.join(map(str, shape))}, tile {tile}/{overlap}, batch {batch}; {_note(ctx)}".strip(),
        )
    )
    return rows


def refine(ctx: Context) -> list[Row]:
    """``--refine crf-torch`` on the device, next to the model: throughput with and without it."""
    s = ctx.settings
    side = s.side(4096, 512)
    scene = str(inputs.tiled_scene(side, bands=4, data=s.data))
    model = str(inputs.gpu_model("bundled", data=s.data))
    found = ctx.measure(
        {
            "segment": ("gigaseg", _segment(ctx, scene, model, "g14a.zarr")),
            "segment --refine crf-torch": ("gigaseg", _segment(ctx, scene, model, "g14b.zarr", refine="crf-torch")),
        },
        repeats=1,
    )
    ratio = _ratio(found["segment --refine crf-torch"], found["segment"])
    rows = _speed_rows("14", found, f"bundled U-Net {side}^2")
    rows.append(Row("14", "with crf-torch / without", ratio, target="(info)", note=_note(ctx)))
    return rows


def determinism(ctx: Context) -> list[Row]:
    """The same plan twice on the GPU: identical masks with ``--deterministic``; what the flag costs."""
    s = ctx.settings
    side = s.side(4096, 512)
    scene = str(inputs.tiled_scene(side, bands=4, data=s.data))
    model = str(inputs.gpu_model("resnet34", data=s.data))
    runs = {
        f"{kind} {i}": (
            "gigaseg",
            _segment(ctx, scene, model, f"g15-{kind}-{i}.zarr", deterministic=kind == "deterministic"),
        )
        for kind in ("default", "deterministic")
        for i in (1, 2)
    }
    found = ctx.measure(runs, repeats=1)
    same = {
        kind: _same_masks(ctx.output(f"g15-{kind}-1.zarr"), ctx.output(f"g15-{kind}-2.zarr"))
        for kind in ("default", "deterministic")
    }
    cost = _ratio(_best(found, "default"), _best(found, "deterministic"))
    rows = _speed_rows("15", found, f"resnet34 U-Net {side}^2")
    rows.append(
        Row(
            "15",
            "--deterministic: two runs give identical masks",
            float(same["deterministic"]),
            target="1 (yes)",
            met=same["deterministic"],
            note=_note(ctx),
        )
    )
    rows.append(Row("15", "default: two runs give identical masks", float(same["default"]), target="(info)"))
    rows.append(Row("15", "default / --deterministic throughput", cost, target="(info) what the flag costs"))
    return rows


# In the order of what matters most, should a lease run out: the targets first.
GPU_CASES = {11: efficiency, 12: versus_monai, 15: determinism, 13: volume, 14: refine}


# --- helpers ------------------------------------------------------------------------------------


def _segment(ctx: Context, scene: str, model: str, out: str, **options: Any) -> dict[str, Any]:
    """gigaseg's parameters: its own batch size (from free memory); unless refining, the clock
    starts after opening and a warm-up batch, as the forward engine's does."""
    params = {"input": scene, "model": model, "out": ctx.output(out), "batch_size": None, "device": _device(ctx)}
    return {**params, "steady": "refine" not in options, **options}


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _waits(m: Measurement) -> str:
    """Where the model's thread spent its seconds (waits on readers and writers, its own host work)."""
    t = m.extra.get("timings")
    if not t:
        return ""
    parts = ", ".join(f"{k} {v:.2f}" for k, v in t.items())
    return f"model thread s: {parts} ({m.extra.get('readers')} readers);"


def _memory_row(case: str, label: str, m: Measurement, plan: dict[str, Any]) -> Row:
    peak, predicted = m.extra.get("gpu_peak_mb"), plan.get("device", 0) / 2**20
    if peak is None:
        return Row(case, f"{label}: peak GPU memory / dry-run estimate", None, note="no GPU")
    ratio = peak / predicted if predicted else None
    note = f"{peak:.0f} MiB measured, {predicted:.0f} MiB predicted"
    met = None if ratio is None else ratio <= 1.0
    return Row(case, f"{label}: peak GPU memory / dry-run estimate", ratio, target="<= 1.0", met=met, note=note)


def _best(found: dict[str, Measurement], kind: str) -> Measurement:
    return min((m for name, m in found.items() if name.startswith(kind)), key=lambda m: m.seconds)


def _same_masks(a: str, b: str) -> bool:
    import numpy as np
    import zarr

    if not (Path(a).exists() and Path(b).exists()):
        return False
    return bool(np.array_equal(zarr.open_group(a, mode="r")["mask"][:], zarr.open_group(b, mode="r")["mask"][:]))

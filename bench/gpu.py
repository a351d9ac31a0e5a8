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
from bench.cases import Context, Row, _mask_agreement, _ratio, _speed_rows
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


# The rows of case 18: (label, format, environment of the worker, ONNX Runtime provider it needs).
GPU_FORMATS: tuple[tuple[str, str, dict[str, str], str | None], ...] = (
    ("checkpoint", "checkpoint", {}, None),
    ("TorchScript (traced)", "torchscript", {}, None),
    ("torch.export .pt2 (dynamic N, H, W)", "pt2", {}, None),
    (
        "ONNX Runtime, CUDA provider",
        "onnx",
        {"GIGASEG_ONNX_PROVIDERS": "CUDAExecutionProvider"},
        "CUDAExecutionProvider",
    ),
    (
        "ONNX Runtime, TensorRT provider (fp32)",
        "onnx",
        {"GIGASEG_ONNX_PROVIDERS": "TensorrtExecutionProvider,CUDAExecutionProvider", "GIGASEG_TRT_FP16": "0"},
        "TensorrtExecutionProvider",
    ),
    (
        "ONNX Runtime, TensorRT provider (fp16)",
        "onnx",
        {"GIGASEG_ONNX_PROVIDERS": "TensorrtExecutionProvider,CUDAExecutionProvider", "GIGASEG_TRT_FP16": "1"},
        "TensorrtExecutionProvider",
    ),
)
# TensorRT builds an engine in each fresh process (gigaseg keeps no engine cache), minutes for a
# U-Net: those rows run once, after the others' repetitions.
_BUILDS_ENGINE = "TensorrtExecutionProvider"


def formats(ctx: Context) -> list[Row]:
    """One smp U-Net (ResNet-34, 8 classes) as a checkpoint, TorchScript, ``.pt2`` and ONNX (on ONNX
    Runtime's CUDA and TensorRT providers): gigaseg GeoTIFF -> Zarr, over the checkpoint's speed.

    The exports are made here, on the CPU, from the checkpoint (bench/inputs.py, ``export``).
    An ONNX row that cannot run on this machine (no onnxruntime-gpu, no such provider, no
    ``onnx`` package to export with) is skipped with its reason, as is any export that fails;
    a session that fell back to another provider is reported, not counted.
    """
    s, device = ctx.settings, _device(ctx)
    side = s.side(8192, 512)
    scene = str(inputs.tiled_scene(side, bands=4, data=s.data))
    checkpoint = inputs.gpu_model("resnet34", data=s.data)
    card = inputs.exported_card(checkpoint)
    label = f"resnet34 U-Net {side}^2"
    runs: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {"main": {}, "engine builds": {}}
    skipped: dict[str, str] = {}
    wanted: dict[str, str] = {}
    for i, (name, fmt, environ, provider) in enumerate(GPU_FORMATS):
        reason = _onnx_support(device, provider) if fmt == "onnx" else None
        if reason is None:
            model, reason = (str(checkpoint), None) if fmt == "checkpoint" else _exported(checkpoint, fmt, s.data)
        if reason:
            skipped[name] = reason
            continue
        params = _segment(ctx, scene, model, f"g18-{i}.zarr")
        if fmt != "checkpoint":
            params["card"] = card
        if environ:
            params["environ"] = environ
        if provider:
            wanted[name] = provider
        runs["engine builds" if provider == _BUILDS_ENGINE else "main"][name] = ("gigaseg", params)
    found = ctx.measure(runs["main"])
    if runs["engine builds"]:
        found |= ctx.measure(runs["engine builds"], repeats=1)
    rows = _speed_rows("18", found, label)
    rows += [
        Row("18", f"{label}: {name} throughput", None, "Mpix/s", note=f"skipped: {why}")
        for name, why in skipped.items()
    ]
    base = found.get("checkpoint", Measurement("gigaseg", error="not run"))
    outs = {name: ctx.output(f"g18-{i}.zarr") for i, (name, *_) in enumerate(GPU_FORMATS)}
    for name, *_ in GPU_FORMATS[1:]:
        if name in skipped:
            rows.append(Row("18", f"{label}: {name} / checkpoint", None, note=f"skipped: {skipped[name]}"))
            continue
        m = found[name]
        ran = m.extra.get("onnx_providers") or []
        if name in wanted and ran[:1] != [wanted[name]] and device.startswith("cuda"):
            why = f"not counted: the session ran on {', '.join(ran) or 'no provider'}, not {wanted[name]}"
            rows.append(Row("18", f"{label}: {name} / checkpoint", None, note=why))
            continue
        ratio = _ratio(m, base)
        parts = [f"{m.seconds:.2f} vs {base.seconds:.2f} s after opening"]
        opened = m.extra.get("open_seconds"), base.extra.get("open_seconds")
        if None not in opened:
            parts.append(f"opening and warm-up {opened[0]:.2f} vs {opened[1]:.2f} s")
        if ran:
            parts.append("providers " + ", ".join(ran))
        if not (m.error or base.error):
            agree = _mask_agreement(outs[name], outs["checkpoint"])
            if agree is not None:
                parts.append(f"mask = checkpoint's on {100 * agree:.2f}% of pixels")
        parts.append(f"batch {m.extra.get('batch')}")
        note = m.error or base.error or "; ".join(parts + [_note(ctx)]).strip("; ")
        rows.append(
            Row("18", f"{label}: {name} / checkpoint", ratio, target=">= 0.9", met=_at_least(ratio, 0.9), note=note)
        )
    return rows


def _onnx_support(device: str, provider: str | None) -> str | None:
    """Why ONNX rows needing ``provider`` cannot run here, or None. On the CPU (the dry run)
    gigaseg runs them on ONNX Runtime's CPU provider, whatever the environment asks."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (a GPU needs onnxruntime-gpu; bench/wheels.sh does not carry it)"
    if not device.startswith("cuda") or provider is None:
        return None
    available = list(ort.get_available_providers())
    if provider not in available:
        return (
            f"onnxruntime {ort.__version__} here has no {provider} (it has {', '.join(available)}): "
            "onnxruntime-gpu is needed, and too large to travel with bench/wheels.sh"
        )
    return None


def _exported(checkpoint: Path, fmt: str, data: Path) -> tuple[str, str | None]:
    """The exported model's path, or why it could not be made (the case goes on without it)."""
    try:
        return str(inputs.export(checkpoint, fmt, data=data)), None
    except Exception as e:  # any exporter's failure (onnx missing, an op it cannot take) skips only its rows
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return "", f"could not export to {fmt}: {type(e).__name__}: {first}"


# In the order of what matters most, should a lease run out: the targets first.
GPU_CASES = {11: efficiency, 12: versus_monai, 15: determinism, 13: volume, 14: refine, 18: formats}


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

"""The benchmark cases: each a function of the settings that returns table rows.

Targets are ratios measured in the same run, so they hold on a noisy machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import inputs
from bench.engines import planned_tiles
from bench.measure import Measurement, interleaved, run_worker

MIB_PER_GB = 1024  # peak RSS is in MiB; "1.5 GB" is read as 1.5 GiB = 1536 MiB


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one benchmark run (``quick`` for a smoke run)."""

    quick: bool = False
    repeats: int = 2
    threads: int = os.cpu_count() or 2
    batch_size: int = 4
    data: Path = inputs.DATA
    out: Path = inputs.DATA.parent / "runs"
    monai_limit_mb: int = 8192
    dask_workers: tuple[int, ...] = (1, 2)
    inline: bool = False  # measure in this process (the smoke test), not in fresh workers
    device: str = "cpu"  # the GPU cases' device (bench.gpu)

    @property
    def tile(self) -> tuple[int, int]:
        """(tile, overlap) of the 2-D models."""
        return (128, 16) if self.quick else (512, 64)

    def side(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Row:
    case: str
    name: str
    value: float | None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def cells(self) -> list[str]:
        value = "-" if self.value is None else f"{self.value:.3g}" if abs(self.value) < 1000 else f"{self.value:.0f}"
        met = {True: "yes", False: "NO", None: ""}[self.met]
        return [self.case, self.name, f"{value} {self.unit}".strip(), self.target, met, self.note]


@dataclass
class Context:
    settings: Settings
    notes: list[str] = field(default_factory=list)

    def scene(self, side: int) -> str:
        return str(inputs.scene(side, data=self.settings.data))

    def model(self, name: str) -> str:
        tile, overlap = self.settings.tile
        return str(inputs.model(name, tile=tile, overlap=overlap, data=self.settings.data))

    def output(self, name: str) -> str:
        self.settings.out.mkdir(parents=True, exist_ok=True)
        return str(self.settings.out / name)

    def measure(self, runs: dict[str, tuple[str, dict[str, Any]]], **kw: Any) -> dict[str, Measurement]:
        s = self.settings
        return interleaved(runs, repeats=kw.pop("repeats", s.repeats), threads=s.threads, inline=s.inline, **kw)

    def measure_once(self, engine: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
        s = self.settings
        return run_worker(engine, params, threads=s.threads, inline=s.inline, **kw)


def _ratio(a: Measurement, b: Measurement) -> float | None:
    if a.error or b.error or not a.mpix_per_s or not b.mpix_per_s:
        return None
    return a.mpix_per_s / b.mpix_per_s


def _speed_rows(case: str, found: dict[str, Measurement], label: str) -> list[Row]:
    rows = []
    for name, m in found.items():
        worst = f" (worst {max(m.runs):.2f} s)" if len(m.runs) > 1 else ""
        note = m.error or (
            f"{m.seconds:.2f} s best of {len(m.runs)}{worst}, {m.tiles} tiles, peak RSS {m.peak_rss_mb:.0f} MiB"
        )
        rows.append(Row(case, f"{label}: {name} throughput", m.mpix_per_s or None, "Mpix/s", note=note))
    return rows


# --- 1. pipeline efficiency ------------------------------------------------------------------


def pipeline_efficiency(ctx: Context) -> list[Row]:
    """``gigaseg segment`` (disk to disk) over the pure model forward on the same tiles."""
    s = ctx.settings
    rows = []
    # The target is a throughput, so it is read on a scene where the per-scene costs
    # (model load, store creation, the first batch) are amortised; the small scene
    # shows what they cost.
    for name, side, target in (
        ("unet", s.side(8192, 512), 0.9),
        ("unet", s.side(2048, 384), None),
        ("conv", s.side(2048, 384), None),
    ):
        scene, model = ctx.scene(side), ctx.model(name)
        tiles = planned_tiles(scene, model)
        found = ctx.measure(
            {
                "gigaseg": (
                    "gigaseg",
                    {"input": scene, "model": model, "out": ctx.output("c1.zarr"), "batch_size": s.batch_size},
                ),
                "forward": ("forward", {"input": scene, "model": model, "batch_size": s.batch_size, "tiles": tiles}),
            }
        )
        ratio = _ratio(found["gigaseg"], found["forward"])
        label = f"{name} {side}^2"
        rows += _speed_rows("1", found, label)
        rows.append(
            Row(
                "1",
                f"{label}: segment / forward",
                ratio,
                target=f">= {target}" if target else "(info)",
                met=None if target is None or ratio is None else ratio >= target,
                note=f"{Path(scene).name}, batch {s.batch_size}, {s.threads} threads",
            )
        )
    return rows


# --- 2. versus the peers ---------------------------------------------------------------------


def versus_peers(ctx: Context) -> list[Row]:
    """gigaseg (disk to disk) against MONAI, pytorch-toolbelt and tiler (scene in memory)."""
    s = ctx.settings
    rows = []
    for name, side in (("conv", s.side(8192, 512)), ("unet", s.side(2048, 384))):
        scene, model = ctx.scene(side), ctx.model(name)
        common = {"input": scene, "model": model, "batch_size": s.batch_size}
        found = ctx.measure(
            {
                "gigaseg": ("gigaseg", {**common, "out": ctx.output("c2.zarr")}),
                "monai": ("monai", common),
                "pytorch-toolbelt": ("toolbelt", common),
                "tiler": ("tiler", common),
            }
        )
        rows += _speed_rows("2", found, name)
        for peer in ("monai", "pytorch-toolbelt", "tiler"):
            ratio = _ratio(found["gigaseg"], found[peer])
            is_monai = peer == "monai"
            rows.append(
                Row(
                    "2",
                    f"{name}: gigaseg / {peer}",
                    ratio,
                    target=">= 1.0" if is_monai else "(info)",
                    met=(ratio >= 1.0) if is_monai and ratio is not None else None,
                    note=f"{Path(scene).name}" + (f"; {found[peer].error}" if found[peer].error else ""),
                )
            )
    return rows


# --- 3. memory -------------------------------------------------------------------------------


def memory(ctx: Context) -> list[Row]:
    """Peak RSS of gigaseg at two scene sizes (cheap model), and MONAI's on the same scenes."""
    s = ctx.settings
    small, large = s.side(5000, 1000), s.side(20000, 2000)
    model = ctx.model("conv")
    peaks = {}
    for side in (small, large):
        scene = ctx.scene(side)
        found = ctx.measure(
            {
                "gigaseg": (
                    "gigaseg",
                    {"input": scene, "model": model, "out": ctx.output("c3.zarr"), "batch_size": s.batch_size},
                )
            },
            repeats=1,
        )
        peaks[side] = found["gigaseg"]
    big, base = peaks[large], peaks[small]
    limit = 1.5 * MIB_PER_GB
    rows = [
        Row(
            "3",
            f"gigaseg peak RSS at {small}^2",
            base.peak_rss_mb,
            "MiB",
            note=base.error or f"{base.mpix_per_s:.2f} Mpix/s",
        ),
        Row(
            "3",
            f"gigaseg peak RSS at {large}^2",
            big.peak_rss_mb,
            "MiB",
            target="<= 1536 MiB",
            met=big.peak_rss_mb <= limit if not big.error else False,
            note=big.error or f"{big.mpix_per_s:.2f} Mpix/s",
        ),
        Row(
            "3",
            f"peak RSS {large}^2 / {small}^2",
            big.peak_rss_mb / base.peak_rss_mb if base.peak_rss_mb else None,
            target="<= 1.2",
            met=big.peak_rss_mb <= 1.2 * base.peak_rss_mb,
        ),
    ]
    for side in (small, large):
        cap = s.monai_limit_mb if side == large else None
        common = {"input": ctx.scene(side), "model": model, "batch_size": s.batch_size}
        result = ctx.measure_once("monai", common, memory_limit_mb=cap)
        note = f"address space capped at {cap} MiB: {result['error']}" if "error" in result else ""
        value = None if "error" in result else result["peak_rss_mb"]
        rows.append(Row("3", f"MONAI peak RSS at {side}^2", value, "MiB", note=note))
    return rows


# --- 4. halo overhead ------------------------------------------------------------------------


def halo(ctx: Context) -> list[Row]:
    """Tiles computed over tiles strictly needed, at default settings, for many scene sizes."""
    from gigaseg import SegmentOptions
    from gigaseg.tiler import BlockGrid, TileGrid
    from gigaseg.tiler.grid import halo_overhead

    options = SegmentOptions()
    worst = (0.0, 0)
    for side in (2048, 5000, 8192, 16385, 20000, 24577, 32769, 50000, 100000):
        grid = TileGrid.create((side, side), 512, 64)
        blocks = BlockGrid.create((side, side), max_block=options.block or 16384, chunk=options.chunk or 512)
        worst = max(worst, (halo_overhead(grid, blocks), side))
    rows = [
        Row(
            "4",
            "tiles computed / needed, worst 2-D scene",
            worst[0],
            target="<= 1.10",
            met=worst[0] <= 1.10,
            note=f"at {worst[1]}^2; tile 512, overlap 64, default block and chunk; scenes 2048^2 .. 100000^2",
        ),
    ]
    grid = TileGrid.create((20000, 20000), 512, 64)
    blocks = BlockGrid.create((20000, 20000), max_block=options.block or 16384, chunk=options.chunk or 512)
    rows.append(
        Row(
            "4",
            "tiles computed / needed, 20000^2",
            halo_overhead(grid, blocks),
            target="<= 1.10",
            met=halo_overhead(grid, blocks) <= 1.10,
            note=f"{blocks.size} blocks of {blocks.block}",
        )
    )
    return rows


# --- 5. 3-D ----------------------------------------------------------------------------------


def volume(ctx: Context) -> list[Row]:
    """A 512 x 512 x 400 volume, 3-D U-Net, gigaseg against MONAI."""
    reason = volume_support()
    if reason:
        return [Row("5", "3-D: skipped", None, note=reason)]
    s = ctx.settings
    arch, kwargs = volume_arch()
    shape = (48, 48, 40) if s.quick else (512, 512, 400)
    tile, overlap = (32, 8) if s.quick else (96, 16)
    path = inputs.volume(shape, data=s.data)
    model = inputs.model3d(arch, kwargs, tile=tile, overlap=overlap, data=s.data)
    common = {"input": str(path), "model": str(model), "batch_size": 1 if not s.quick else 2}
    found = ctx.measure({"gigaseg": ("gigaseg", {**common, "out": ctx.output("c5.zarr")}), "monai": ("monai", common)})
    g, m = found["gigaseg"], found["monai"]
    ratio = _ratio(g, m)
    rows = _speed_rows("5", found, f"3-D {arch}")
    rows.append(
        Row(
            "5",
            "3-D: gigaseg / MONAI throughput",
            ratio,
            target=">= 1.0",
            met=None if ratio is None else ratio >= 1.0,
            note=f"{'x'.join(map(str, shape))}, tile {tile}/{overlap}",
        )
    )
    rows.append(
        Row(
            "5",
            "3-D: peak RSS gigaseg / MONAI",
            g.peak_rss_mb / m.peak_rss_mb if m.peak_rss_mb else None,
            target="< 1.0",
            met=g.peak_rss_mb < m.peak_rss_mb,
            note=f"{g.peak_rss_mb:.0f} vs {m.peak_rss_mb:.0f} MiB",
        )
    )
    return rows


VOLUME_ARCHS = ("unet3d", "monai_unet", "monai-unet", "unet_3d", "unet-3d")


def volume_arch() -> tuple[str, dict[str, Any]]:
    """The 3-D U-Net of the registry (its first known name) and small settings for it."""
    from gigaseg.models import MODELS

    arch = next(a for a in VOLUME_ARCHS if a in MODELS)
    return arch, {}


def volume_support() -> str | None:
    """Why the 3-D case cannot run in this checkout, or None."""
    from gigaseg.models import MODELS

    try:
        from gigaseg.io.sources import open_source  # noqa: F401 - the NIfTI-capable source contract
    except ImportError:
        return "gigaseg segment does not read NIfTI in this checkout (no gigaseg.io.sources)"
    if not any(a in MODELS for a in VOLUME_ARCHS):
        have = ", ".join(sorted(MODELS))
        return f"no 3-D U-Net in the model registry (looked for {', '.join(VOLUME_ARCHS)}; it has {have})"
    return None


# --- 6. scaling over Dask workers ------------------------------------------------------------


def scaling(ctx: Context) -> list[Row]:
    """``gigaseg run``: one job of several scenes on 1, 2, ... local Dask workers."""
    s = ctx.settings
    side = s.side(1024, 256)
    folder = s.out / "c6-scenes"
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(4):
        link = folder / f"scene{i}.tif"
        if not link.exists():
            link.symlink_to(Path(ctx.scene(side)).resolve())
        scenes.append(str(link))
    model = ctx.model("unet")
    runs = {
        f"{n} workers": (
            "dask",
            {"inputs": scenes, "model": model, "out": ctx.output(f"c6-{n}"), "batch_size": s.batch_size, "workers": n},
        )
        for n in s.dask_workers
    }
    found = ctx.measure(runs, repeats=1)
    rows = _speed_rows("6", found, f"4 x {side}^2 unet")
    first = found[f"{s.dask_workers[0]} workers"]
    for name, m in list(found.items())[1:]:
        rows.append(
            Row("6", f"speed-up {name} / {s.dask_workers[0]}", _ratio(m, first), note="(info) cluster start included")
        )
    shutil.rmtree(folder, ignore_errors=True)
    return rows


# --- 7. the class count ----------------------------------------------------------------------


def classes(ctx: Context) -> list[Row]:
    """The one-convolution model at 4, 8 and 16 classes: what the host side carries as classes grow."""
    s = ctx.settings
    side = s.side(8192, 512)
    scene = str(inputs.scene(side, bands=4, data=s.data))
    runs = {}
    for k in (4, 8, 16):
        model = str(inputs.conv_model(k, tile=s.tile[0], overlap=s.tile[1], data=s.data))
        runs[f"{k} classes"] = (
            "gigaseg",
            {"input": scene, "model": model, "out": ctx.output("c7.zarr"), "batch_size": 8},
        )
    found = ctx.measure(runs)
    rows = _speed_rows("7", found, f"conv {side}^2, 4 bands")
    m = found["16 classes"]
    value = m.mpix_per_s or None
    rows.append(
        Row(
            "7",
            "conv, 16 classes: segment throughput",
            value,
            "Mpix/s",
            target=">= 9.0 (2 x 4.5 before the device path)",
            met=None if value is None or s.quick else value >= 9.0,
            note=f"batch 8, {s.threads} threads; peak RSS {m.peak_rss_mb:.0f} MiB",
        )
    )
    return rows


# --- 8. many classes in 3-D, bounded memory ------------------------------------------------


def many_classes(ctx: Context) -> list[Row]:
    """A 104-class 3-D model on a 512 x 512 x 400 volume on the CPU: peak RSS within 8 GiB and the dry run."""
    s = ctx.settings
    shape = (48, 48, 40) if s.quick else (512, 512, 400)
    tile, overlap = (32, 8) if s.quick else (96, 16)
    path = str(inputs.volume(shape, data=s.data))
    model = str(inputs.model3d("conv3d", {}, tile=tile, overlap=overlap, classes=104, data=s.data))
    params = {"input": path, "model": model, "out": ctx.output("c8.zarr"), "device": "cpu"}
    plan = ctx.measure_once("dry_run", params)
    found = ctx.measure({"gigaseg": ("gigaseg", {**params, "batch_size": 1})}, repeats=1)
    m = found["gigaseg"]
    predicted = plan.get("host", 0) / 2**20
    limit = 8 * MIB_PER_GB
    return [
        *_speed_rows("8", found, "104-class conv3d"),
        Row(
            "8",
            "104 classes, 3-D: peak RSS",
            m.peak_rss_mb or None,
            "MiB",
            target=f"<= {limit} MiB",
            met=None if m.error else m.peak_rss_mb <= limit,
            note=m.error or f"{'x'.join(map(str, shape))}, tile {tile}/{overlap}",
        ),
        Row(
            "8",
            "104 classes, 3-D: peak RSS / dry-run estimate",
            m.peak_rss_mb / predicted if predicted else None,
            target="<= 1.0",
            met=None if m.error or not predicted else m.peak_rss_mb <= predicted,
            note=f"dry run: {predicted:.0f} MiB host",
        ),
    ]


# --- 9. verification ------------------------------------------------------------------------


def verification(ctx: Context) -> list[Row]:
    """``gigaseg verify`` against ``gigaseg export`` on the same 20000^2 store (each reads every chunk)."""
    import time

    from gigaseg import SegmentOptions, segment
    from gigaseg.io.export import export_mask
    from gigaseg.io.store import verify_store

    side = ctx.settings.side(20000, 2000)
    store = ctx.output("c9.zarr")
    options = SegmentOptions(overwrite=True, batch_size=ctx.settings.batch_size)
    segment(ctx.scene(side), ctx.model("conv"), store, options)
    seconds: dict[str, list[float]] = {"verify": [], "export": []}
    for _ in range(ctx.settings.repeats):
        started = time.perf_counter()
        found = verify_store(store)
        seconds["verify"].append(time.perf_counter() - started)
        started = time.perf_counter()
        export_mask(store, ctx.output("c9.tif"), overwrite=True)
        seconds["export"].append(time.perf_counter() - started)
    verify, export = min(seconds["verify"]), min(seconds["export"])
    return [
        Row("9", f"verify {side}^2 store", verify, "s", note=f"{found.checked} chunks"),
        Row("9", f"export {side}^2 store to COG", export, "s"),
        Row("9", "export time / verify time", export / verify, target=">= 1.0", met=export >= verify),
    ]


# --- 10. training on sparse labels ------------------------------------------------------------


def sparse_labels(ctx: Context) -> list[Row]:
    """``gigaseg train`` against a per-pixel random forest on sparse labels (bench/training.py)."""
    from bench.training import sparse_vs_forest

    return sparse_vs_forest(ctx)


# --- 16. object storage (11-15 are the GPU cases, bench/gpu.py) -------------------------------


def object_storage(ctx: Context) -> list[Row]:
    """A COG on (loopback) S3 into a store on S3, against local files (bench/cloud.py)."""
    from bench.cloud import cloud

    return cloud(ctx)


# --- 17. model formats -----------------------------------------------------------------------

FORMAT_LABELS = {
    "checkpoint": "gigaseg checkpoint",
    "torchscript": "TorchScript (traced)",
    "pt2": "torch.export .pt2 (dynamic N, H, W)",
    "onnx": "ONNX on ONNX Runtime, CPU provider (dynamic N, H, W)",
}


def model_formats(ctx: Context) -> list[Row]:
    """One U-Net as a gigaseg checkpoint, TorchScript, ``.pt2`` and ONNX: ``segment`` end to end
    (GeoTIFF -> Zarr, model loading on the clock) for each, over the checkpoint's speed."""
    s = ctx.settings
    side = s.side(8192, 512)
    tile, overlap = s.tile
    scene = ctx.scene(side)
    paths = inputs.exported_models("unet", tile=tile, overlap=overlap, data=s.data)
    card = inputs.exported_card(paths["checkpoint"])  # what the exported graphs do not carry
    outs = {fmt: ctx.output(f"c17-{fmt}.zarr") for fmt in paths}
    runs = {
        fmt: (
            "gigaseg",
            {
                "input": scene,
                "model": str(path),
                "out": outs[fmt],
                "batch_size": s.batch_size,
                **({} if fmt == "checkpoint" else {"card": card}),
            },
        )
        for fmt, path in paths.items()
    }
    found = ctx.measure(runs)
    label = f"unet {side}^2"
    rows = _speed_rows("17", {FORMAT_LABELS[f]: m for f, m in found.items()}, label)
    base = found["checkpoint"]
    for fmt in list(paths)[1:]:
        m = found[fmt]
        ratio = _ratio(m, base)
        agree = _mask_agreement(outs[fmt], outs["checkpoint"]) if not (m.error or base.error) else None
        opened = m.extra.get("opened_in_clock_s"), base.extra.get("opened_in_clock_s")
        note = f"{m.seconds:.2f} vs {base.seconds:.2f} s"
        cpu = m.extra.get("cpu_seconds"), base.extra.get("cpu_seconds")
        if None not in cpu:
            note += f" (CPU {cpu[0]:.0f} vs {cpu[1]:.0f} s)"
        if None not in opened:
            note += f"; opening {opened[0]:.2f} vs {opened[1]:.2f} s of it"
        if agree is not None:
            note += f"; mask = checkpoint's on {100 * agree:.3f}% of pixels"
        rows.append(
            Row(
                "17",
                f"{label}: {fmt} / checkpoint",
                ratio,
                target=">= 0.9",
                met=None if ratio is None else ratio >= 0.9,
                note=m.error or base.error or note,
            )
        )
    return rows


def model_grid(ctx: Context) -> list[Row]:
    """An nnU-Net result folder trained at 1.5 mm with 104 classes on a 512 x 512 x 1000 scan of
    0.7 x 0.7 x 1.0 mm: gigaseg (model grid, streamed) against nnU-Net's own predictor, time and peak RSS;
    gigaseg's peak against 8 GB and against what its dry run predicted."""
    s = ctx.settings
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError:
        return [
            Row(
                "19", "model grid: skipped", None, note="pip install 'gigaseg[nnunet]' (and nnunetv2 for its predictor)"
            )
        ]
    shape, patch = ((64, 64, 100), 32) if s.quick else ((512, 512, 1000), 96)
    path = str(inputs.scan(shape, (0.7, 0.7, 1.0), data=s.data))
    model = str(inputs.nnunet_result(104, spacing=1.5, patch=patch, data=s.data))
    out = ctx.output("c19.zarr")
    predicted = ctx.measure_once("dry_run", {"input": path, "model": model, "out": out})
    found = ctx.measure({"gigaseg": ("gigaseg", {"input": path, "model": model, "out": out, "batch_size": None})})
    g = found["gigaseg"]
    label = f"{'x'.join(map(str, shape))} at 0.7x0.7x1.0 mm, 104 classes at 1.5 mm"
    rows = _speed_rows("19", found, label)
    host = predicted.get("host", 0) / 2**20
    rows.append(
        Row(
            "19",
            "model grid: gigaseg peak RSS",
            g.peak_rss_mb,
            "MiB",
            "<= 8192",
            g.peak_rss_mb <= 8192,
            g.error or label,
        )
    )
    rows.append(
        Row(
            "19",
            "model grid: gigaseg peak / dry-run estimate",
            g.peak_rss_mb / host if host else None,
            target="<= 1.0",
            met=bool(host) and g.peak_rss_mb <= host,
            note=f"{g.peak_rss_mb:.0f} vs {host:.0f} MiB predicted",
        )
    )
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        rows.append(Row("19", "model grid: nnU-Net's predictor", None, note="nnunetv2 not installed"))
        return rows
    cap = 20 * 1024  # MiB of address space: the machine (24 GiB) stays usable when nnU-Net runs out
    theirs = ctx.measure_once(
        "nnunet", {"input": path, "model": model, "out": ctx.output("c19-nnunet.nii.gz")}, memory_limit_mb=cap
    )
    error = theirs.get("error")
    note = (
        f"{error.splitlines()[-1][:160]} (address space capped at {cap} MiB)"
        if error
        else f"{theirs.get('seconds', 0):.0f} s"
    )
    rows.append(Row("19", "model grid: nnU-Net's predictor peak RSS", theirs.get("peak_rss_mb"), "MiB", note=note))
    if not error:
        ratio = theirs["seconds"] / g.seconds if g.seconds else None
        rows.append(
            Row(
                "19",
                "model grid: nnU-Net seconds / gigaseg seconds",
                ratio,
                note=f"{theirs['seconds']:.0f} vs {g.seconds:.0f} s",
            )
        )
        agree = _nifti_agreement(out, ctx.output("c19-nnunet.nii.gz"))
        rows.append(Row("19", "model grid: voxels where the masks agree", agree))
    return rows


def _nifti_agreement(store: str, nifti: str) -> float | None:
    """The share of voxels where a store's mask (k, j, i) and a NIfTI mask (i, j, k) agree, slab by slab."""
    import nibabel as nib
    import numpy as np
    import zarr

    if not (Path(store).exists() and Path(nifti).exists()):
        return None
    ours, theirs = zarr.open_group(store, mode="r")["mask"], nib.load(nifti).dataobj
    same = 0
    for k in range(0, ours.shape[0], 64):
        same += int((ours[k : k + 64] == np.asarray(theirs[:, :, k : k + 64]).T).sum())
    return same / float(np.prod(ours.shape))


def _mask_agreement(a: str, b: str) -> float | None:
    """The fraction of pixels where two stores' masks agree (None when one is missing)."""
    import numpy as np
    import zarr

    if not (Path(a).exists() and Path(b).exists()):
        return None
    x, y = zarr.open_group(a, mode="r")["mask"][:], zarr.open_group(b, mode="r")["mask"][:]
    return float(np.mean(x == y)) if x.shape == y.shape else 0.0


CASES: dict[int, Callable[[Context], list[Row]]] = {
    1: pipeline_efficiency,
    2: versus_peers,
    3: memory,
    4: halo,
    5: volume,
    6: scaling,
    7: classes,
    8: many_classes,
    9: verification,
    10: sparse_labels,
    16: object_storage,
    17: model_formats,
    19: model_grid,
}

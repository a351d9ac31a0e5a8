"""What one measurement runs, inside its own worker process (see :mod:`bench.worker`).

Each engine takes keyword parameters and returns ``{"seconds", "pixels", "tiles"}``:
``seconds`` is the wall time of the measured work only, ``pixels`` the scene's
pixels (voxels), ``tiles`` the tiles the model saw. Every engine uses the same
model file, tile, overlap, gaussian blending, batch size and torch threads.

The peers get the scene already in memory and normalised (that part is not
timed); gigaseg reads it from disk and writes a Zarr mask inside the timing.
The peers' timing ends with the argmaxed uint8 mask in memory.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

Result = dict[str, Any]


def gigaseg(
    *,
    input: str,
    model: str,
    out: str,
    batch_size: int | None,
    device: str = "cpu",
    steady: bool = False,
    card: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    **options: Any,
) -> Result:
    """``gigaseg segment``: file on disk to Zarr on disk, model loading included.

    The network's Python modules are imported before the clock, as every other
    engine's are (they build their model before it): ``import monai``, which
    the 3-D U-Net needs, takes 1.3-2.3 s, a once-per-process cost that is not
    tiling. ``segment`` still reads the checkpoint and builds the model inside it.
    On a GPU the result also holds the batch size gigaseg chose, where its model
    thread spent its seconds, and the peak GPU memory. With ``steady`` the clock
    starts after opening (model loaded, store created) and one warm-up batch, as
    the forward engine's does; ``open_seconds`` says what opening took. Without
    ``steady``, ``opened_in_clock_s`` says what opening took inside the timing.

    ``model`` is any format gigaseg reads (``card``: the keys a graph does not
    carry, as ``segment(..., card=)`` takes them); for an exported graph only its
    runtime's modules are imported before the clock (:func:`_prepare`). ``environ``
    is set for the run (``GIGASEG_ONNX_PROVIDERS``, ``GIGASEG_TRT_FP16``) and put
    back after it; for an ONNX model the result names the providers its session has.
    """
    with _environment(environ or {}):
        return _gigaseg(
            input=input, model=model, out=out, batch_size=batch_size, device=device, steady=steady, card=card, **options
        )


def _gigaseg(
    *,
    input: str,
    model: str,
    out: str,
    batch_size: int | None,
    device: str,
    steady: bool,
    card: dict[str, Any] | None,
    **options: Any,
) -> Result:
    from gigaseg import SegmentOptions, segment
    from gigaseg.jobs.scene import SceneSpec, open_runner
    from gigaseg.jobs.segment import run_blocks
    from gigaseg.refine import RefineOptions

    _prepare(model)  # imports only: segment() loads the model again, on the clock
    refine = options.pop("refine", None)
    opts = SegmentOptions(
        batch_size=batch_size,
        overwrite=True,
        device=device,
        refine=RefineOptions(method=refine) if refine else None,
        **options,
    )
    _reset_peak(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    if refine:
        summary = segment(input, model, out, opts, card=card)
    else:
        runner = open_runner(SceneSpec(input, model, out, opts, card), create=True)
        if steady:  # the forward engine's warm-up, here too; opening stays reported
            _warm_up(runner, device)
            extra["open_seconds"] = time.perf_counter() - started
            started, cpu_started = time.perf_counter(), time.process_time()
        else:
            extra["opened_in_clock_s"] = time.perf_counter() - started
        summary = run_blocks(runner, out, False)
        extra |= {"batch": runner.batch_size, "readers": runner.readers, "timings": runner.timings}
    _sync(device)
    seconds = time.perf_counter() - started
    extra["cpu_seconds"] = time.process_time() - cpu_started  # every thread's: less moved by a busy machine
    if not refine and model.endswith(".onnx"):
        extra["onnx_providers"] = _onnx_providers(model, runner.predictor.device)
    sizing = {k: v for k, v in options.items() if k in ("block", "chunk", "band_memory")}
    tiles = planned_tiles(input, model, card=card, **sizing)
    return {"seconds": seconds, "pixels": summary.pixels, "tiles": tiles, **extra, **_peak(device)}


def _warm_up(runner: Any, device: str) -> None:
    """One batch of zeros through the network: CUDA and cuDNN initialise their kernels."""
    import torch

    p = runner.predictor
    channels, tile = runner.source.channels, runner.plan.grid.tile
    x = torch.zeros((runner.batch_size, channels, *tile), device=device)
    if len(tile) == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    p.scores(x)
    _sync(device)


def dry_run(*, input: str, model: str, out: str, device: str = "cpu", **options: Any) -> Result:
    """What ``--dry-run`` predicts for this run: batch size and peak bytes on the host and the GPU."""
    from gigaseg import SegmentOptions
    from gigaseg.jobs.preflight import scene_footprint
    from gigaseg.jobs.scene import SceneSpec

    summary, memory = scene_footprint(SceneSpec(input, model, out, SegmentOptions(device=device, **options)))
    batch = int(summary.split(", batch ")[1].split(" ")[0])
    return {"seconds": 0.0, "pixels": 0, "tiles": 0, "batch": batch, "host": memory.host, "device": memory.device}


def planned_tiles(input: str, model: str, *, card: dict[str, Any] | None = None, **options: Any) -> int:
    """Tiles gigaseg's plan computes for ``input`` (halo recompute at block edges included)."""
    from gigaseg import SegmentOptions
    from gigaseg.jobs.scene import SceneSpec, plan_scene
    from gigaseg.tiler.grid import halo_overhead

    _, plan = plan_scene(SceneSpec(input, model, "", SegmentOptions(device="cpu", **options), card), dry=True)
    return round(halo_overhead(plan.grid, plan.blocks) * plan.grid.size)


def forward(*, input: str, model: str, batch_size: int, tiles: int, distinct: int = 16, device: str = "cpu") -> Result:
    """The pure model forward on ``tiles`` tiles of the scene, ``batch_size`` at a time.

    The batches are cut from the scene's own tiles and built before the clock
    starts (up to ``distinct`` different tiles, reused in turn), already on the
    device; only ``model(batch)`` is timed, under ``inference_mode`` and
    channels_last (2-D), as gigaseg's predictor runs it: on a GPU in bfloat16
    autocast (cuDNN's autotuner off, as in gigaseg), synchronised before the clock stops.
    """
    import torch

    net, card = _load(model)
    grid, pool = _tile_pool(input, card, distinct)
    pool = card.normalize_tiles(pool)
    layout = torch.channels_last if len(grid.tile) == 2 else torch.contiguous_format
    count = math.ceil(tiles / batch_size)
    batches = [
        torch.from_numpy(np.take(pool, range(i * batch_size, (i + 1) * batch_size), axis=0, mode="wrap"))
        .to(device)
        .contiguous(memory_format=layout)
        for i in range(min(count, len(pool)))
    ]
    net = net.to(device, memory_format=layout).eval()
    with torch.inference_mode(), _autocast(device):
        net(batches[0])  # warm-up, as gigaseg's first batch is not special either
        _sync(device)
        started = time.perf_counter()
        for i in range(count):
            net(batches[i % len(batches)])
        _sync(device)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "pixels": math.prod(grid.shape), "tiles": count * batch_size}


def monai(*, input: str, model: str, batch_size: int, device: str = "cpu") -> Result:
    """MONAI ``sliding_window_inference`` on the scene in memory, gaussian blending.

    On a GPU the scene is put in GPU memory before the clock (MONAI's best case),
    the network runs in bfloat16 autocast, channels-last, as gigaseg's does,
    and the probabilities and argmax stay on the device; the clock stops with the
    uint8 mask on the device, synchronised.
    """
    net, card = _load(model)
    image = _normalised(input, card)
    grid = _grid(image.shape[1:], card)
    net = _on(net, device, len(grid.tile))
    x = _tensor(image, device)
    _sync(device)
    started = time.perf_counter()
    mask = _monai(net, x, grid, batch_size, device)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pixels": math.prod(mask.shape), "tiles": grid.size, **_peak(device)}


def monai_mask(*, input: str, model: str, batch_size: int, device: str = "cpu") -> np.ndarray:
    """MONAI's label mask of the scene (for checking that the engines agree)."""
    net, card = _load(model)
    image = _normalised(input, card)
    grid = _grid(image.shape[1:], card)
    return _monai(_on(net, device, len(grid.tile)), _tensor(image, device), grid, batch_size, device).cpu().numpy()


def _monai(net: Any, image: Any, grid: Any, batch_size: int, device: str = "cpu") -> Any:
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode(), _autocast(device):
        probs = sliding_window_inference(
            image[None],
            roi_size=grid.tile,
            sw_batch_size=batch_size,
            predictor=_softmax(net),
            overlap=[o / t for o, t in zip(grid.overlap, grid.tile, strict=True)],
            mode="gaussian",
            sigma_scale=0.125,
        )
        return probs[0].argmax(0).to(torch.uint8)


def toolbelt(*, input: str, model: str, batch_size: int) -> Result:
    """pytorch-toolbelt's ImageSlicer + TileMerger with gigaseg's gaussian window."""
    import torch
    from pytorch_toolbelt.inference.tiles import ImageSlicer, TileMerger

    from gigaseg.tiler import blend_window

    net, card = _load(model)
    image = np.ascontiguousarray(np.moveaxis(_normalised(input, card), 0, -1))  # (H, W, C), as cv2 wants
    grid = _grid(image.shape[:2], card)
    window = blend_window("gaussian", grid.tile)
    started = time.perf_counter()
    slicer = ImageSlicer(image.shape, tile_size=grid.tile, tile_step=grid.stride, weight=window)
    merger = TileMerger(slicer.target_shape, card.num_classes, slicer.weight)
    tiles = slicer.split(image)
    with torch.inference_mode():
        for i in range(0, len(tiles), batch_size):
            batch = torch.from_numpy(np.stack(tiles[i : i + batch_size])).permute(0, 3, 1, 2)
            probs = torch.softmax(net(batch.contiguous(memory_format=torch.channels_last)), 1)
            merger.integrate_batch(probs, slicer.crops[i : i + batch_size])
        merged = merger.merge().permute(1, 2, 0).numpy()
    mask = slicer.crop_to_orignal_size(merged).argmax(-1).astype(np.uint8)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pixels": mask.size, "tiles": len(tiles)}


def tiler(*, input: str, model: str, batch_size: int) -> Result:
    """The ``tiler`` package: Tiler for the input, Merger (gaussian window) for the scores."""
    import torch
    from tiler import Merger, Tiler

    from gigaseg.tiler import blend_window

    net, card = _load(model)
    image = _normalised(input, card)
    grid = _grid(image.shape[1:], card)
    started = time.perf_counter()
    tiles_in = Tiler(image.shape, (image.shape[0], *grid.tile), overlap=(0, *grid.overlap), channel_dimension=0)
    tiles_out = Tiler(image.shape[1:], grid.tile, overlap=grid.overlap)
    merger = Merger(tiles_out, window=blend_window("gaussian", grid.tile), logits=card.num_classes)
    with torch.inference_mode():
        for batch_id, batch in tiles_in(image, batch_size=batch_size):
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            merger.add_batch(batch_id, batch_size, torch.softmax(net(x), 1).numpy())
    mask = merger.merge(unpad=True, argmax=True).astype(np.uint8)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pixels": mask.size, "tiles": tiles_in.n_tiles}


def dask(*, inputs: list[str], model: str, out: str, batch_size: int, workers: int) -> Result:
    """``gigaseg run`` on a local Dask cluster of ``workers`` workers (cluster start included)."""
    from gigaseg.jobs.jobfile import Job
    from gigaseg.jobs.runner import run_job

    job = Job.model_validate(
        {
            "inputs": inputs,
            "model": model,
            "device": "cpu",
            "tiling": {"batch_size": batch_size},
            "output": {"dir": out, "overwrite": True},
            "cluster": {"workers": workers, "retries": 0},
        }
    )
    started = time.perf_counter()
    report = run_job(job, base=Path(out).parent, workers=workers)
    seconds = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"the job failed: {[s.error for s in report.scenes if s.error]}")
    pixels = sum(sum(s.counts.values()) for s in report.scenes)
    return {"seconds": seconds, "pixels": pixels, "tiles": 0, "worker_rss_mb": report.peak_worker_rss_mb}


def nnunet(*, input: str, model: str, out: str) -> Result:
    """nnU-Net v2's own predictor on the NIfTI file, in this process (its worker processes would hide
    their memory from the peak): fold 0, step 0.5, gaussian, no mirroring, as on a CPU; SimpleITK reads
    the scan and writes the mask, on the clock."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(model, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    started = time.perf_counter()
    io = SimpleITKIO()
    image, properties = io.read_images([input])
    mask = predictor.predict_single_npy_array(image, properties)
    io.write_seg(mask, out, properties)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pixels": int(np.prod(image.shape[1:])), "tiles": 0}


ENGINES: dict[str, Callable[..., Result]] = {
    "gigaseg": gigaseg,
    "dry_run": dry_run,
    "forward": forward,
    "monai": monai,
    "toolbelt": toolbelt,
    "tiler": tiler,
    "dask": dask,
    "nnunet": nnunet,
}


# --- helpers ------------------------------------------------------------------------------


def _prepare(model: str) -> None:
    """What is imported before the clock: a checkpoint's network modules (it is built once,
    as the peers build theirs), ONNX Runtime for an ONNX file. TorchScript and
    ``.pt2`` archives need only torch. Loading the model itself is on the clock."""
    from gigaseg.models.formats import detect_format

    fmt = detect_format(model)
    if fmt == "torch":
        _load(model)
    elif fmt == "onnx":
        import onnxruntime  # noqa: F401 - the runtime's import, once per process


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` while the block runs, as it was afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _onnx_providers(model: str, device: Any) -> list[str]:
    """The execution providers of the session gigaseg ran ``model`` in (its cached session:
    the key is the tiles' device, ``cuda:0`` rather than ``cuda``)."""
    import torch

    from gigaseg.models.runtimes import onnx_session

    where = torch.empty(0, device=device).device
    return list(onnx_session(model, device=where).get_providers())


def _load(model: str) -> tuple[Any, Any]:
    from gigaseg.models import load_checkpoint

    return load_checkpoint(model)


def _grid(shape: tuple[int, ...], card: Any) -> Any:
    from gigaseg.tiler import TileGrid

    return TileGrid.create(tuple(shape), card.tile, card.overlap)


def _image(path: str) -> np.ndarray:
    """The whole scene as float32 ``(C, *spatial)``: a GeoTIFF's bands or a NIfTI volume.

    A volume comes in nibabel's ``(i, j, k)`` order, as MONAI's ``LoadImage``
    gives it and as gigaseg shows it to the network (so the masks agree), and
    C-contiguous, the layout in which the peers slice it fastest.
    """
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.ascontiguousarray(np.asarray(nib.load(path).dataobj, dtype=np.float32))[None]
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(out_dtype=np.float32)


def _normalised(path: str, card: Any) -> np.ndarray:
    return card.normalize_tiles(_image(path)[None])[0]


def _padded(tile: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    pad = [(0, 0)] + [(0, s - n) for s, n in zip(size, tile.shape[1:], strict=True)]
    return np.pad(tile, pad, mode="symmetric") if any(p for _, p in pad) else tile


def _softmax(net: Any) -> Callable[[Any], Any]:
    import torch

    def predict(x: Any) -> Any:
        return torch.softmax(net(x.contiguous(memory_format=_layout(x))), 1, dtype=torch.float32)

    return predict


def _tile_pool(path: str, card: Any, distinct: int) -> tuple[Any, np.ndarray]:
    """The scene's grid and up to ``distinct`` of its tiles, spread over it, as float32 (padded)."""
    grid = _grid(_shape(path), card)
    picks = np.linspace(0, grid.size - 1, min(distinct, grid.size)).astype(int)
    boxes = [grid.tile_box(np.unravel_index(i, grid.counts)) for i in picks]
    if path.endswith((".nii", ".nii.gz")):
        image = _image(path)
        tiles = [image[(slice(None), *b.slices())] for b in boxes]
    else:
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(path) as ds:
            tiles = [
                ds.read(window=Window(b.start[1], b.start[0], *b.shape[::-1]), out_dtype=np.float32) for b in boxes
            ]
    return grid, np.stack([_padded(t, grid.tile) for t in tiles])


def _shape(path: str) -> tuple[int, ...]:
    """The scene's spatial shape: a volume's in nibabel's (i, j, k) order, a raster's (rows, cols)."""
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return tuple(nib.load(path).shape[:3])
    import rasterio

    with rasterio.open(path) as ds:
        return (ds.height, ds.width)


def _on(net: Any, device: str, ndim: int) -> Any:
    import torch

    if not device.startswith("cuda"):
        return net  # on the CPU as the CPU cases have always run it
    return net.to(device, memory_format=torch.channels_last if ndim == 2 else torch.contiguous_format).eval()


def _tensor(image: np.ndarray, device: str) -> Any:
    import torch

    return torch.from_numpy(image).to(device)


def _autocast(device: str) -> Any:
    import contextlib

    import torch

    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> dict[str, float]:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def _layout(x: Any) -> Any:
    import torch

    return torch.channels_last if x.ndim == 4 else torch.contiguous_format

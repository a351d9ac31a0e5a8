"""Benchmark: refinement speed against model inference, and refiners' quality.

    python -m bench.crf --size 3072 --out bench/out/crf      # from the repository root

Measures on one generated land-cover scene (``write_landcover_tiff``) and a small
untrained U-Net (``init_checkpoint``):

* model inference: ``segment`` without refinement, Mpix/s (end to end: read,
  infer, blend, write);
* CRF on one core: one refinement block (block + halo) in this process, Mpix/s
  of output pixels and of window pixels;
* CRF on the whole machine: ``refine`` over the store with one worker per core;
* end to end: ``segment --refine`` against ``segment`` alone (target >= 0.5);
* quality and speed of every refiner on a generated problem with known truth.

Every case is a function returning a dict, so a later ``bench/run.py`` can call them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gigaseg import SegmentOptions, segment
from gigaseg.io.generate import write_landcover_tiff
from gigaseg.io.sources import open_source
from gigaseg.io.store import open_store
from gigaseg.jobs.demo import untrained_landcover_unet
from gigaseg.jobs.refine import PROGRESS, plan_refine, refine, refine_block
from gigaseg.refine import RefineOptions, get_refiner, resolve_params
from gigaseg.refine.metrics import boundary_f1, mean_iou
from gigaseg.refine.synthetic import blurred_probabilities, shapes_image, shapes_labels


def make_inputs(out: Path, size: int, *, tile: int = 512) -> tuple[Path, Path]:
    """A four-band scene of ``size`` x ``size`` and a seeded untrained U-Net (ResNet-18)."""
    out.mkdir(parents=True, exist_ok=True)
    scene = out / f"scene{size}.tif"
    if not scene.exists():
        write_landcover_tiff(scene, (size, size), seed=11, border=size // 64)
    return scene, untrained_landcover_unet(out / "unet.pt", tile=tile)


class Clock:
    """Wall seconds and CPU seconds (this process's threads plus reaped worker processes).

    The development machine is shared: wall time there measures the neighbours'
    load as much as ours, CPU time much less so. On a machine kept busy by one
    job, throughput follows the CPU seconds per pixel.
    """

    def __enter__(self) -> Clock:
        self.wall = time.perf_counter()
        self.cpu = _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu() - self.cpu

    def record(self, pixels: int) -> dict[str, float]:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "mpix_per_wall_s": pixels / 1e6 / self.wall,
            "mpix_per_cpu_s": pixels / 1e6 / self.cpu,
        }


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def time_segment(scene: Path, model: Path, out: Path, refine_options: RefineOptions | None) -> dict[str, Any]:
    """``segment`` with or without refinement, end to end."""
    options = SegmentOptions(overwrite=True, refine=refine_options)
    with Clock() as clock:
        summary = segment(scene, model, out, options)
    return clock.record(summary.pixels)


def time_one_block(store_path: Path, scene: Path, options: RefineOptions) -> dict[str, Any]:
    """One refinement block on one core, in this process: output and window Mpix/s."""
    store = open_store(store_path, mode="r+")
    job = plan_refine(store, open_source(scene, bands=[1, 2, 3]), options, bands=[1, 2, 3])
    store.progress_array(PROGRESS, job.blocks.counts, reset=True)
    index = tuple(c // 2 for c in job.blocks.counts)  # an inner block: a full halo all round
    box = job.blocks.block_box(index)
    window = np.prod([b + 2 * h for b, h in zip(box.shape, job.halo, strict=True)])
    with Clock() as clock:
        refine_block(job, index)
    return {
        "block": list(box.shape),
        "halo": list(job.halo),
        "window_pixels": int(window),
        **clock.record(box.size),
        "window_mpix_per_cpu_s": float(window) / 1e6 / clock.cpu,
    }


def time_refine(store_path: Path, scene: Path, options: RefineOptions) -> dict[str, Any]:
    """``refine`` over the whole store with ``options.workers`` processes."""
    with Clock() as clock:
        _, counts, _ = refine(store_path, scene, options)
    return {**clock.record(int(counts.sum())), "workers": options.workers}


def quality(size: int = 768, *, methods: dict[str, Any] | None = None) -> dict[str, Any]:
    """IoU, boundary F-score and seconds of each refiner on generated shapes with blurred probabilities."""
    classes = 3
    truth = shapes_labels((size, size), classes=classes, count=24, seed=7)
    image = shapes_image(truth, classes=classes, seed=7).astype(np.float32)
    probs = blurred_probabilities(truth, classes=classes, seed=7)
    valid = np.ones(truth.shape, bool)
    rows: dict[str, Any] = {"raw argmax": _scores(probs, truth, classes)}
    for name, overrides in (methods or {"crf": None, "crf-torch": None, "superpixel": None}).items():
        method = name.split(" ")[0]  # "crf 5 it, ..." -> "crf"
        params = resolve_params(method, overrides, 2)
        with Clock() as clock:
            refiner = get_refiner(method)
            refined = refiner(probs, image, valid, params=params, origin=(0, 0), spacing=(1.0, 1.0))
        rows[name] = {**_scores(refined, truth, classes), **clock.record(truth.size)}
    return rows


def _scores(probs: np.ndarray, truth: np.ndarray, classes: int) -> dict[str, float]:
    labels = probs.argmax(0)
    return {
        "iou": mean_iou(labels, truth, classes=classes),
        "boundary_f1": boundary_f1(labels, truth, tolerance=1),
    }


FAST = {"iterations": 5, "sxy": 80.0, "srgb": 13.0}
METHODS = {
    "crf": ("crf", None),
    "crf 5 it, 80/13": ("crf", FAST),
    "crf-torch": ("crf-torch", None),
    "crf-torch 5 it, 80/13": ("crf-torch", FAST),
    "superpixel": ("superpixel", None),
}


def compare(out: Path, size: int) -> dict[str, Any]:
    """Every method on the generated shapes (quality) and on one land-cover block (speed)."""
    scene, model = make_inputs(out, size)
    store = out / "refined.zarr"
    if not store.exists():
        segment(scene, model, store, SegmentOptions(overwrite=True, probabilities="uint8"))
    results = {"machine": machine(), "quality": quality(methods={k: v[1] for k, v in METHODS.items()})}
    results["one_block"] = {
        name: time_one_block(store, scene, RefineOptions(method=method, params=params, block=1024))
        for name, (method, params) in METHODS.items()
    }
    return results


def machine() -> dict[str, Any]:
    import pydensecrf
    import skimage
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pydensecrf": getattr(pydensecrf, "__version__", "pydensecrf2 1.1"),
        "scikit-image": skimage.__version__,
        "cuda": torch.cuda.is_available(),
    }


def run(
    out: Path,
    size: int,
    method: str,
    params: dict[str, Any] | None,
    block: int | None,
    *,
    one_block: int = 1024,
) -> dict[str, Any]:
    scene, model = make_inputs(out, size)
    options = RefineOptions(method=method, params=params, block=block)
    cores = len(os.sched_getaffinity(0))
    results: dict[str, Any] = {"machine": machine(), "size": size, "method": method, "params": params}
    results["inference"] = time_segment(scene, model, out / "plain.zarr", None)
    results["with_refine"] = time_segment(scene, model, out / "refined.zarr", options)
    plain, refined = results["inference"], results["with_refine"]
    results["ratio_wall"] = plain["wall_s"] / refined["wall_s"]
    results["ratio_cpu"] = plain["cpu_s"] / refined["cpu_s"]
    results["job"] = open_store(out / "refined.zarr").attrs["refine"]
    # one block with a full halo all round: the 3 x 3 grid's middle block at --one-block side
    results["one_core"] = time_one_block(out / "refined.zarr", scene, replace(options, block=one_block))
    results["machine_refine"] = time_refine(out / "refined.zarr", scene, replace(options, workers=cores))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/crf"))
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--method", default="crf")
    parser.add_argument("--params", type=json.loads, default=None, help='JSON overrides: {"iterations": 5}')
    parser.add_argument("--block", type=int, default=None, help="Refinement block side [default].")
    parser.add_argument("--one-block", type=int, default=1024, help="Block side of the one-core case.")
    parser.add_argument("--quality", action="store_true", help="Only the quality comparison.")
    parser.add_argument("--compare", action="store_true", help="Quality and one-block speed of every method.")
    args = parser.parse_args()
    if args.quality:
        print(json.dumps(quality(), indent=2))
        return
    if args.compare:
        print(json.dumps(compare(args.out, args.size), indent=2, default=str))
        return
    results = run(args.out, args.size, args.method, args.params, args.block, one_block=args.one_block)
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

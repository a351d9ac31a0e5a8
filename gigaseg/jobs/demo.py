"""``gigaseg demo``: the whole path on a generated scene, no files or network needed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gigaseg.io.generate import write_landcover_tiff
from gigaseg.jobs.options import SegmentOptions
from gigaseg.jobs.segment import Summary, segment
from gigaseg.models.checkpoint import init_checkpoint
from gigaseg.synthetic import CLASSES, COLORS

BUNDLED_2D = "landcover2d.pt"


def bundled_model(name: str) -> Path | None:
    """Path of a model shipped inside the package, or None if it is not there."""
    path = resources.files("gigaseg.models") / "bundled" / name
    return Path(str(path)) if path.is_file() else None


def untrained_landcover_unet(path: Path, *, tile: int) -> Path:
    """A seeded, untrained 4-band U-Net (ResNet-18) for the generated land-cover scenes."""
    init_checkpoint(
        path,
        arch="unet",
        encoder="resnet18",
        in_channels=4,
        classes=list(CLASSES),
        colors=list(COLORS),
        tile=tile,
        overlap=tile // 8,
        mean=[1000.0] * 4,
        std=[1000.0] * 4,
    )
    return path


def run_demo(output: str | Path, *, size: int = 2048, device: str = "auto", progress: bool = False) -> Summary:
    """Generate a 4-band scene with a nodata border, segment it, return the summary."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    scene = write_landcover_tiff(output / "scene.tif", (size, size), seed=7, border=max(1, size // 64))
    model = bundled_model(BUNDLED_2D)
    if model is None:  # a source tree without the trained model: a seeded untrained one
        model = untrained_landcover_unet(output / "untrained.pt", tile=256)
    options = SegmentOptions(device=device, overwrite=True, progress=progress)
    return segment(scene, model, output / "mask.zarr", options)

"""Shared fixtures: small seeded rasters and small models, made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from gigaseg.models.checkpoint import init_checkpoint

UTM = "EPSG:32633"
UTM_TRANSFORM = from_origin(500000.0, 6000000.0, 10.0, 10.0)


def require(available: bool, reason: str) -> None:
    """Skip a test locally when a service or device is absent; fail in CI (CI=true)."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)


def write_tiff(
    path: Path, data: np.ndarray, *, crs: str | None = UTM, transform=UTM_TRANSFORM, nodata=None, **profile
) -> Path:
    """Write ``(bands, h, w)`` data as a tiled GeoTIFF."""
    bands, height, width = data.shape
    options = {"tiled": True, "blockxsize": 256, "blockysize": 256} if min(height, width) >= 256 else {}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=bands,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **{**options, **profile},
    ) as dst:
        dst.write(data)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def make_tiff(tmp_path, rng):
    def make(shape=(3, 300, 400), dtype="uint8", name="scene.tif", **kw) -> Path:
        data = rng.integers(0, 200, shape).astype(dtype)
        return write_tiff(tmp_path / name, data, **kw)

    return make


@pytest.fixture
def pointwise_model(tmp_path) -> Path:
    """A 1x1-conv model: its receptive field is one pixel, so tiling cannot change it."""
    path = tmp_path / "pointwise.pt"
    init_checkpoint(
        path,
        arch="conv",
        in_channels=3,
        classes=["a", "b", "c", "d"],
        tile=64,
        overlap=16,
        mean=[100.0] * 3,
        std=[50.0] * 3,
        seed=3,
    )
    return path


@pytest.fixture
def unet_model(tmp_path) -> Path:
    path = tmp_path / "unet.pt"
    init_checkpoint(
        path,
        arch="unet",
        encoder="resnet18",
        in_channels=3,
        classes=["a", "b", "c"],
        tile=64,
        overlap=16,
        mean=[100.0] * 3,
        std=[50.0] * 3,
        seed=5,
        arch_kwargs={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    )
    return path

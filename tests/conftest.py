"""Shared fixtures: small seeded rasters and small models, made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from gigaseg.models.checkpoint import init_checkpoint

pytest_plugins = ["tests.servers"]  # S3 and HTTP range servers on loopback

UTM = "EPSG:32633"
UTM_TRANSFORM = from_origin(500000.0, 6000000.0, 10.0, 10.0)


def needs_cuda(test):
    """A GPU test: it skips where torch sees no CUDA device. CI machines have none, so
    there it skips too; the GPU benchmark script runs these (``pytest -m gpu``)."""
    import torch

    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.gpu(skip(test))


def run(*args):
    """``gigaseg ARGS`` in this process (click's runner); every argument as text."""
    from click.testing import CliRunner

    from gigaseg.jobs.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(result, *words):
    """The run failed with exit 2 and one ``gigaseg: error:`` line holding each of ``words``; no traceback."""
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("gigaseg: warning:")]
    assert len(errors) == 1 and errors[0].startswith("gigaseg: error:"), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def require(available: bool, reason: str) -> None:
    """Skip a test locally when a service or device is absent; fail in CI (CI=true)."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)


def write_tiff(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM,
    transform=UTM_TRANSFORM,
    nodata=None,
    descriptions: tuple[str, ...] = (),
    **profile,
) -> Path:
    """Write ``(bands, h, w)`` data as a tiled GeoTIFF (bands named by ``descriptions``)."""
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
        for band, name in enumerate(descriptions, start=1):
            dst.set_band_description(band, name)
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


def small_unet(path: Path, *, seed: int) -> Path:
    """A seeded 3-band, 3-class U-Net small enough for tests (receptive field > overlap)."""
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
        seed=seed,
        arch_kwargs={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    )
    return path


@pytest.fixture
def unet_model(tmp_path) -> Path:
    return small_unet(tmp_path / "unet.pt", seed=5)


def oblique_affine(angles=(0.09, -0.17, 0.35), zooms=(-0.7, -0.8, 2.4), origin=(91.0, 110.5, -72.25)):
    """A scanner-like affine: a rotation (radians about x, y, z) times voxel sizes, plus an origin.

    Negative zooms flip an axis: the default is oblique, anisotropic and LPS-like.
    """
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


OBLIQUE = oblique_affine()


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray = OBLIQUE,
    *,
    sform_code: int = 1,
    qform_code: int = 1,
    version: int = 1,
    slope: float | None = None,
    inter: float | None = None,
) -> Path:
    """Write ``data`` (nibabel's ``(i, j, k[, t])`` order) with the given transforms and codes."""
    import nibabel as nib

    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    image = klass(data, affine)
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(slope, inter or 0.0)
    nib.save(image, str(path))
    return path


def organ_nifti(path: Path, shape=(20, 26, 23), *, seed=0, affine=OBLIQUE, **kw) -> Path:
    """A CT-like volume of ``shape`` (i, j, k) in HU as int16, written as NIfTI."""
    from gigaseg.synthetic import organ_volume

    volume, _ = organ_volume(shape[::-1], seed=seed)  # organ_volume is (D, H, W) = (k, j, i)
    return write_nifti(path, np.rint(volume.T).astype(np.int16), affine, **kw)


def conv3d_checkpoint(path: Path, *, in_channels=1, classes=3, tile=16, overlap=4, seed=2, **card) -> Path:
    """A seeded conv3d model; ``arch_kwargs`` in ``card`` set its kernel and depth."""
    init_checkpoint(
        path,
        arch="conv3d",
        in_channels=in_channels,
        classes=[f"c{i}" for i in range(classes)],
        tile=tile,
        overlap=overlap,
        spatial_dims=3,
        seed=seed,
        **{"mean": [0.0] * in_channels, "std": [300.0] * in_channels, **card},
    )
    return path

"""Inputs anything GDAL opens: https://, s3://, /vsizip/, VRT mosaics; NIfTI over http.

Each remote scene is segmented and its mask compared bit for bit with the mask
of the same local file; failures (a missing object, an HTTP 503 at open or on a
block read, an object replaced before --resume) end as one clear line or as an
error the runner retries. The servers are the loopback ones of tests/servers.py.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from affine import Affine

from gigaseg.errors import SourceError
from gigaseg.io import remote
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.identity import remote_identity
from gigaseg.io.sources import open_source
from gigaseg.jobs.fingerprint import input_identity
from gigaseg.jobs.jobfile import load_job
from gigaseg.jobs.runner import _from_the_system
from gigaseg.models.checkpoint import init_checkpoint
from gigaseg.tiler import Box
from tests.conftest import UTM, UTM_TRANSFORM, conv3d_checkpoint, one_error, organ_nifti, run, write_tiff

ARGS = ["--block", "128", "--chunk", "64"]


def mask(store) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")["mask"][...]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """GDAL's (and fsspec reads') retries, fast: 2 of them, 10 ms apart at first."""
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 256 x 256 3-band scene (deflate, 128-pixel tiles), its two halves, a conv model, the local mask."""
    d = tmp_path_factory.mktemp("remote")
    data = np.random.default_rng(11).integers(0, 200, (3, 256, 256)).astype(np.uint8)
    tif = write_tiff(d / "scene.tif", data, compress="deflate", tiled=True, blockxsize=128, blockysize=128)
    write_tiff(d / "left.tif", data[:, :, :128])
    right = UTM_TRANSFORM @ Affine.translation(128, 0)
    write_tiff(d / "right.tif", data[:, :, 128:], transform=right)
    (d / "mosaic.vrt").write_text(mosaic_vrt(["left.tif", "right.tif"], data.shape))
    model = d / "conv.pt"
    init_checkpoint(
        model,
        arch="conv",
        in_channels=3,
        classes=["a", "b", "c"],
        tile=64,
        overlap=16,
        mean=[100.0] * 3,
        std=[50.0] * 3,
        seed=3,
    )
    result = run("segment", tif, "--model", model, "--out", d / "local.zarr", *ARGS)
    assert result.exit_code == 0, result.output
    return d, model, mask(d / "local.zarr")


def mosaic_vrt(tiles: list[str], shape: tuple[int, int, int]) -> str:
    """A VRT of tiles side by side (each ``shape[1]`` rows, ``shape[2] / len(tiles)`` columns), paths relative."""
    bands, height, width = shape
    step = width // len(tiles)
    transform = ", ".join(str(v) for v in UTM_TRANSFORM.to_gdal())
    from rasterio.crs import CRS

    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    lines.append(f"  <SRS>{CRS.from_string(UTM).to_wkt()}</SRS>")
    lines.append(f"  <GeoTransform>{transform}</GeoTransform>")
    for band in range(1, bands + 1):
        lines.append(f'  <VRTRasterBand dataType="Byte" band="{band}">')
        for i, tile in enumerate(tiles):
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="1">{tile}</SourceFilename>',
                f"      <SourceBand>{band}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{step}" ySize="{height}"/>',
                f'      <DstRect xOff="{i * step}" yOff="0" xSize="{step}" ySize="{height}"/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines)


def s3_put(local: Path, url: str) -> None:
    import s3fs

    s3fs.S3FileSystem().put(str(local), url)


# ---- naming and settings ----------------------------------------------------------------------------


def test_urls_map_to_gdal_file_systems_and_other_names_stay_as_they_are():
    assert remote.gdal_path("https://h.org/a/scene.tif?sig=1") == "/vsicurl/https://h.org/a/scene.tif?sig=1"
    assert remote.gdal_path("http://h.org/scene") == "/vsicurl/http://h.org/scene"
    assert remote.gdal_path("s3://bucket/k/scene.tif") == "/vsis3/bucket/k/scene.tif"
    assert remote.gdal_path("gs://bucket/scene.tif") == "/vsigs/bucket/scene.tif"
    assert remote.gdal_path("az://box/scene.tif") == "/vsiaz/box/scene.tif"
    assert remote.gdal_path("abfs://box@acct.dfs.core.windows.net/k/s.tif") == "/vsiaz/box/k/s.tif"
    for name in ("/data/scene.tif", "scene.tif", "/vsizip//d/a.zip/b.tif", "/vsis3/b/k.tif", 'ZARR:"x.zarr":/mask'):
        assert remote.gdal_path(name) == name
    assert remote.is_remote("s3://b/k.tif") and remote.is_remote("/vsizip//vsicurl/https://h/a.zip/b.tif")
    assert not remote.is_remote("/vsizip//d/a.zip/b.tif") and not remote.is_remote("/d/scene.tif")
    assert remote.is_local("/d/scene.tif") and not remote.is_local("/vsizip//d/a.zip/b.tif")
    assert not remote.is_local('ZARR:"x.zarr":/mask') and not remote.is_local("https://h/a.tif")


def test_the_gdal_defaults_yield_to_the_environment(monkeypatch):
    for key in remote.GDAL_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    defaults = remote.gdal_defaults()
    assert defaults["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert defaults["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES" and defaults["VSI_CACHE"] == "TRUE"
    assert int(defaults["GDAL_HTTP_MAX_RETRY"]) > 0 and float(defaults["GDAL_HTTP_RETRY_DELAY"]) > 0
    assert "CPL_VSIL_CURL_ALLOWED_EXTENSIONS" not in defaults  # it would refuse URLs without an extension
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "YES")
    assert "GDAL_DISABLE_READDIR_ON_OPEN" not in remote.gdal_defaults()
    assert remote.gdal_options("/d/scene.tif") == {}  # local reads keep GDAL's own (sidecar .msk files)


# ---- the same mask, wherever the scene lies --------------------------------------------------------


@pytest.mark.parametrize("where", ["http", "s3", "vsizip", "vrt", "vrt-http"])
def test_a_remote_or_virtual_scene_segments_like_the_local_file(where, scene, tmp_path, request):
    d, model, expected = scene
    if where == "http":
        server = request.getfixturevalue("range_server")
        shutil.copy(d / "scene.tif", server.root / "scene.tif")
        source = f"{server.url}/scene.tif"
    elif where == "s3":
        bucket = request.getfixturevalue("s3")
        s3_put(d / "scene.tif", f"{bucket}/scenes/scene.tif")
        source = f"{bucket}/scenes/scene.tif"
    elif where == "vsizip":
        with zipfile.ZipFile(tmp_path / "scenes.zip", "w") as z:
            z.write(d / "scene.tif", "inner/scene.tif")
        source = f"/vsizip/{tmp_path}/scenes.zip/inner/scene.tif"
    elif where == "vrt":
        source = str(d / "mosaic.vrt")
    else:
        server = request.getfixturevalue("range_server")
        for name in ("mosaic.vrt", "left.tif", "right.tif"):
            shutil.copy(d / name, server.root / name)
        source = f"{server.url}/mosaic.vrt"
    out = tmp_path / "out.zarr"
    result = run("segment", source, "--model", model, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output
    assert np.array_equal(mask(out), expected)
    attrs = zarr.open_group(str(out), mode="r").attrs["gigaseg"]
    assert attrs["input"] == source  # as given: not made a local path
    assert attrs["complete"] is True


def test_a_url_is_read_in_ranges_not_whole(scene, range_server):
    d, _, _ = scene
    data = np.random.default_rng(2).integers(0, 200, (3, 1024, 1024)).astype(np.uint8)
    write_tiff(range_server.root / "big.tif", data, compress="deflate")
    source = GeoTiffSource(f"{range_server.url}/big.tif")
    got, _ = source.read(Box((0, 0), (256, 256)))
    assert np.array_equal(got, data[:, :256, :256])
    assert range_server.served.bytes < (range_server.root / "big.tif").stat().st_size / 4


# ---- failures ---------------------------------------------------------------------------------------


def test_a_missing_url_or_object_is_one_line_naming_it(scene, range_server, s3, tmp_path):
    _, model, _ = scene
    for source in (f"{range_server.url}/nowhere.tif", f"{s3}/nowhere.tif", f"/vsizip/{tmp_path}/none.zip/a.tif"):
        result = run("segment", source, "--model", model, "--out", tmp_path / "o.zarr", *ARGS)
        one_error(result, source, "does not exist")
        assert not (tmp_path / "o.zarr").exists()


def test_a_transient_503_is_retried_and_the_run_succeeds(scene, range_server, tmp_path):
    d, model, expected = scene
    shutil.copy(d / "scene.tif", range_server.root / "scene.tif")
    range_server.fail_next(2, status=503)
    result = run("segment", f"{range_server.url}/scene.tif", "--model", model, "--out", tmp_path / "o.zarr", *ARGS)
    assert result.exit_code == 0, result.output
    assert range_server.failures_left() == 0  # both 503s were served, and retried
    assert np.array_equal(mask(tmp_path / "o.zarr"), expected)


def test_a_persistent_503_at_open_is_one_clear_line(scene, range_server, tmp_path):
    d, model, _ = scene
    shutil.copy(d / "scene.tif", range_server.root / "scene.tif")
    range_server.fail_next(10**6, status=503)
    source = f"{range_server.url}/scene.tif"
    result = run("segment", source, "--model", model, "--out", tmp_path / "o.zarr", *ARGS)
    one_error(result, source, "503")
    range_server.fail_next(0)
    result = run("segment", source, "--model", model, "--out", tmp_path / "o.zarr", *ARGS)
    assert result.exit_code == 0, result.output  # GDAL forgot the failure: the same process opens it now


def test_a_persistent_503_on_a_block_read_fails_that_block_for_a_retry(scene, range_server):
    d, _, _ = scene
    shutil.copy(d / "scene.tif", range_server.root / "scene.tif")
    source = GeoTiffSource(f"{range_server.url}/scene.tif")
    first, _ = source.read(Box((0, 0), (128, 128)))  # one of the four tiles
    range_server.fail_next(10**6, status=503)
    with pytest.raises(SourceError, match=r"cannot read .*scene\.tif") as caught:
        source.read(Box((128, 128), (256, 256)))
    assert _from_the_system(caught.value)  # the runner's block task raises it: Dask retries the block
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno is not None
    range_server.fail_next(0)
    again, _ = source.read(Box((128, 128), (256, 256)))  # the retry, in the same process
    local = GeoTiffSource(d / "scene.tif")
    assert np.array_equal(again, local.read(Box((128, 128), (256, 256)))[0])
    assert np.array_equal(first, local.read(Box((0, 0), (128, 128)))[0])


def test_a_local_file_that_cannot_be_read_stays_a_user_error(tmp_path):
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(SourceError, match="cannot read .* as a raster") as caught:
        GeoTiffSource(tmp_path / "text.tif")
    assert not _from_the_system(caught.value)
    with pytest.raises(SourceError, match="does not exist"):
        GeoTiffSource(tmp_path / "missing.tif")


# ---- resume -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["http", "s3"])
def test_resume_refuses_a_remote_object_replaced_since(where, scene, tmp_path, request):
    d, model, _ = scene
    other = tmp_path / "other.tif"
    write_tiff(other, np.full((3, 256, 256), 7, np.uint8), compress="deflate")
    if where == "http":
        server = request.getfixturevalue("range_server")
        shutil.copy(d / "scene.tif", server.root / "scene.tif")
        source = f"{server.url}/scene.tif"

        def replace() -> None:
            shutil.copy(other, server.root / "scene.tif")
            later = os.stat(server.root / "scene.tif").st_mtime + 60
            os.utime(server.root / "scene.tif", (later, later))

    else:
        bucket = request.getfixturevalue("s3")
        source = f"{bucket}/scene.tif"
        s3_put(d / "scene.tif", source)

        def replace() -> None:
            s3_put(other, source)

    out = tmp_path / "o.zarr"
    before = input_identity(source)
    assert before["size"] == (d / "scene.tif").stat().st_size
    assert set(before) == {"size", "etag" if where == "s3" else "modified"}
    result = run("segment", source, "--model", model, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output
    assert input_identity(source) == before  # the same object: the same identity
    replace()
    result = run("segment", source, "--model", model, "--out", out, "--resume", *ARGS)
    one_error(result, "cannot resume", "input.")


def test_a_file_inside_a_zip_is_known_by_its_size_and_sampled_bytes(scene, tmp_path):
    d, _, _ = scene
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(d / "scene.tif", "scene.tif")
    identity = remote_identity(f"/vsizip/{tmp_path}/a.zip/scene.tif")
    assert identity["size"] == (d / "scene.tif").stat().st_size and len(identity["sampled_sha256"]) == 64
    assert input_identity('ZARR:"nothing.zarr":/mask') == {"path": 'ZARR:"nothing.zarr":/mask'}


# ---- NIfTI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_nifti_over_http_segments_like_the_local_file(name, range_server, tmp_path):
    ct = organ_nifti(tmp_path / name, shape=(20, 18, 12))
    model = conv3d_checkpoint(tmp_path / "m3.pt")
    args = ["--model", model, "--cache", tmp_path / "cache"]
    assert run("segment", ct, *args, "--out", tmp_path / "local.zarr").exit_code == 0
    shutil.copy(ct, range_server.root / name)
    url = f"{range_server.url}/{name}"
    result = run("segment", url, *args, "--out", tmp_path / "remote.zarr")
    assert result.exit_code == 0, result.output
    assert np.array_equal(mask(tmp_path / "remote.zarr"), mask(tmp_path / "local.zarr"))
    source = open_source(url, cache_dir=tmp_path / "cache")
    local = open_source(ct, cache_dir=tmp_path / "cache")
    box = Box((2, 3, 1), (9, 11, 10))
    assert np.array_equal(source.read(box)[0], local.read(box)[0])
    if name.endswith(".gz"):
        copies = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("ct.nii.gz."))
        assert len(copies) == 2  # one for the local file, one for the URL: each its own version
    result = run("segment", f"{range_server.url}/none.nii.gz", *args, "--out", tmp_path / "o.zarr")
    one_error(result, "none.nii.gz", "does not exist")


# ---- job files --------------------------------------------------------------------------------------


def test_a_job_file_takes_urls_as_they_are_and_names_outputs_by_their_stem(tmp_path):
    (tmp_path / "local").mkdir()
    write_tiff(tmp_path / "local" / "field.tif", np.zeros((3, 32, 32), np.uint8))
    (tmp_path / "job.yaml").write_text(
        "inputs:\n"
        "  - https://example.org/scenes/coast.tif?token=a*b\n"
        "  - s3://bucket/tiles/river.tiff\n"
        "  - /vsizip//data/a.zip/inner/lake.tif\n"
        "  - local/*.tif\n"
        "model: m.pt\n"
        "output: {dir: masks}\n"
    )
    job = load_job(tmp_path / "job.yaml")
    specs = job.scenes(base=tmp_path)
    assert [s.input for s in specs] == [
        "https://example.org/scenes/coast.tif?token=a*b",
        "s3://bucket/tiles/river.tiff",
        "/vsizip//data/a.zip/inner/lake.tif",
        str(tmp_path / "local" / "field.tif"),
    ]
    assert [Path(s.output).name for s in specs] == [
        "coast_mask.zarr",
        "river_mask.zarr",
        "lake_mask.zarr",
        "field_mask.zarr",
    ]
    assert job.missing_inputs(tmp_path) == []  # a URL is not looked for here; GDAL says when it is opened
    absolute = job.absolute(tmp_path)
    assert absolute.inputs[:3] == job.inputs[:3]

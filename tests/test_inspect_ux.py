"""What a user reads: ``info`` of volumes and rasters, messages, summaries, dry runs, xarray (issue 16, 10-11)."""

import json

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasterio.crs import CRS

from gigaseg import SegmentOptions, segment
from gigaseg.io.georef import Georef
from gigaseg.io.store import StoreLayout, create_store
from gigaseg.tiler import Box
from tests.conftest import conv3d_checkpoint, one_error, organ_nifti, run, write_tiff

UTM = (CRS.from_epsg(32633).to_wkt(), (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0))


@pytest.fixture
def volume(tmp_path):
    """A NIfTI CT (oblique, LPS-like, 0.7 x 0.8 x 2.4 mm), its 3-D model and its segmented store."""
    ct = organ_nifti(tmp_path / "ct.nii.gz", shape=(12, 10, 8))
    model = conv3d_checkpoint(tmp_path / "m3.pt", tile=8, overlap=2)
    summary = segment(ct, model, tmp_path / "v.zarr", SegmentOptions(cache_dir=str(tmp_path / "cache")))
    return ct, model, tmp_path / "v.zarr", summary


def raster_store(path, classes=("a", "b"), zarr_format=2):
    shape = (300, 500)
    layout = StoreLayout(
        shape=shape,
        chunks=(128, 128),
        block_counts=(1, 1),
        classes=list(classes),
        georef=Georef(*UTM),
        zarr_format=zarr_format,
    )
    store = create_store(path, layout)
    labels = (np.arange(np.prod(shape)) % len(classes)).reshape(shape).astype(np.uint8)
    labels[:7, :9] = store.nodata
    store.write(Box((0, 0), shape), labels)
    store.mark_done((0, 0))
    store.finish()
    return labels


# a) info: a volume's affine, orientation and voxel sizes; a raster's CRS and transform


def test_info_of_a_volume_prints_its_affine_orientation_and_voxel_sizes(volume):
    ct, _, store, _ = volume
    image = nib.load(ct)
    result = run("info", store)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "crs: None" not in lines and not any(line.startswith(("crs:", "transform:")) for line in lines)
    assert f"orientation: {''.join(nib.aff2axcodes(image.affine))}" in lines and "orientation: LPS" in lines
    assert "voxel_sizes_mm: 0.7 x 0.8 x 2.4" in lines
    at = lines.index("affine:")
    rows = [[float(v) for v in line.strip(" []").split()] for line in lines[at + 1 : at + 5]]
    np.testing.assert_allclose(rows, image.affine, rtol=1e-5, atol=1e-4)

    record = json.loads(run("info", store, "--json").stdout)
    np.testing.assert_allclose(record["affine"], image.affine, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(record["voxel_sizes_mm"], [0.7, 0.8, 2.4], rtol=1e-6)
    assert record["axes"] == ["k", "j", "i"] and record["shape"] == [8, 10, 12]
    assert "crs" not in record and "transform" not in record


def test_info_of_a_raster_keeps_its_crs_and_transform(tmp_path):
    raster_store(tmp_path / "r.zarr")
    result = run("info", tmp_path / "r.zarr")
    assert result.exit_code == 0, result.output
    assert "crs: WGS 84 / UTM zone 33N" in result.stdout
    assert "transform: [10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0]" in result.stdout
    assert "affine:" not in result.stdout and "orientation" not in result.stdout


# b) messages that say what is wrong


def test_a_model_directory_is_called_a_directory(tmp_path):
    tif = write_tiff(tmp_path / "s.tif", np.zeros((3, 40, 50), np.uint8))
    (tmp_path / "models").mkdir()
    result = run("segment", tif, "--model", tmp_path / "models", "--out", tmp_path / "o.zarr")
    one_error(result, "is a folder but not one gigaseg reads", "MONAI bundle", "nnU-Net")
    assert "does not exist" not in result.stderr and not (tmp_path / "o.zarr").exists()


def test_info_of_a_missing_path_says_it_does_not_exist(tmp_path):
    result = run("info", tmp_path / "missing.zarr")
    one_error(result, f"{tmp_path / 'missing.zarr'} does not exist")
    assert "not a gigaseg Zarr store" not in result.stderr


# c) init-model counts in words


@pytest.mark.parametrize(("bands", "classes", "said"), [(1, 1, "1 band, 1 class"), (3, 4, "3 bands, 4 classes")])
def test_init_model_says_band_and_class_in_the_singular_for_one(tmp_path, bands, classes, said):
    args = ("--arch", "conv", "--in-channels", bands, "--classes", classes, "--tile", 8, "--overlap", 2)
    result = run("init-model", *args, "--out", tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"untrained conv, {said}")


# d) summaries count voxels for volumes


def test_a_volume_summary_counts_voxels_and_a_raster_summary_pixels(tmp_path, volume, pointwise_model, make_tiff):
    *_, store, summary = volume
    assert " 960 voxels in " in summary.line() and "Mvoxels/s" in summary.line() and " px " not in summary.line()
    assert zarr.open_group(str(store), mode="r").attrs["gigaseg"]["summary"]["unit"] == "voxels"
    raster = segment(make_tiff((3, 60, 70)), pointwise_model, tmp_path / "r.zarr")
    assert " 4200 px in " in raster.line() and "Mpix/s" in raster.line()


# e) a dry run on a machine without CUDA predicts no GPU memory, for rasters and volumes


def test_a_dry_run_without_cuda_predicts_host_memory_only(tmp_path, monkeypatch, volume, pointwise_model, make_tiff):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ct, model, *_ = volume
    for scene, net, unit in ((ct, model, "Mvoxels"), (make_tiff((3, 60, 70)), pointwise_model, "Mpix")):
        result = run("segment", scene, "--model", net, "--out", tmp_path / "dry.zarr", "--dry-run")
        assert result.exit_code == 0, result.output
        assert " on cpu; " in result.stdout and "GPU" not in result.stdout and " host (band " in result.stdout
        assert f" {unit} of model work" in result.stdout
        assert not (tmp_path / "dry.zarr").exists()


# f) the mask as CF flags for xarray; GDAL still sees nodata


def test_the_mask_carries_cf_flags_and_reads_as_integers_in_xarray_and_gdal(tmp_path):
    xr = pytest.importorskip("xarray")
    rioxarray = pytest.importorskip("rioxarray")
    path = tmp_path / "m.zarr"
    labels = raster_store(path, classes=("open water", "built-up", "bare  soil"))

    attrs = zarr.open_group(str(path), mode="r")["mask"].attrs
    assert attrs["flag_values"] == [0, 1, 2]
    assert attrs["flag_meanings"] == "open_water built-up bare_soil"
    assert attrs["nodata"] == 255 and "_FillValue" not in attrs

    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale={"mask": False})  # as the README says
    mask = ds["mask"]
    assert mask.dtype == np.uint8 and np.array_equal(mask.values, labels)
    assert mask.attrs["flag_values"] == [0, 1, 2] and mask.attrs["flag_meanings"] == "open_water built-up bare_soil"
    assert mask.rio.nodata == 255 and mask.rio.crs == CRS.from_wkt(UTM[0])

    with rasterio.open(f'ZARR:"{path}":/mask') as gdal:  # GDAL reads the zarr fill_value as nodata
        assert gdal.nodata == 255 and gdal.crs == CRS.from_wkt(UTM[0]) and np.array_equal(gdal.read(1), labels)
    opened = rioxarray.open_rasterio(f'ZARR:"{path}":/mask')
    assert opened.rio.crs == CRS.from_wkt(UTM[0]) and opened.rio.nodata == 255
    assert np.array_equal(opened.values[0], labels)


def test_a_zarr_v3_mask_reads_as_integers_in_xarray_by_default(tmp_path):
    """v3 arrays name their dimensions; xarray then masks nothing and keeps uint8 labels."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    path = tmp_path / "m3.zarr"
    labels = raster_store(path, classes=("water", "land"), zarr_format=3)
    mask = xr.open_zarr(path, decode_coords="all")["mask"]
    assert mask.dims == ("y", "x") and mask.dtype == np.uint8
    assert np.array_equal(mask.values, labels)
    assert mask.attrs["flag_meanings"] == "water land" and mask.rio.crs == CRS.from_wkt(UTM[0])

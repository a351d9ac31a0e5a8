"""The command line, through click's runner and as a real process."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gigaseg.jobs.cli import cli
from tests.conftest import organ_nifti, write_tiff


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, message, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gigaseg: error:") and message in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_init_segment_info_export(tmp_path, rng):
    tif = write_tiff(tmp_path / "s.tif", rng.integers(0, 200, (3, 90, 130)).astype(np.uint8))
    model = tmp_path / "m.pt"
    result = run(
        "init-model",
        "--arch",
        "unet",
        "--encoder",
        "resnet18",
        "--in-channels",
        3,
        "--classes",
        4,
        "--tile",
        64,
        "--overlap",
        16,
        "--out",
        model,
    )
    assert result.exit_code == 0, result.output
    result = run(
        "segment",
        tif,
        "--model",
        model,
        "--out",
        tmp_path / "o.zarr",
        "--tile",
        64,
        "--overlap",
        8,
        "--blend",
        "cosine",
        "--probabilities",
        "uint8",
    )
    assert result.exit_code == 0, result.output
    assert "Mpix/s" in result.stdout
    result = run("info", tmp_path / "o.zarr")
    assert result.exit_code == 0
    assert "complete: True" in result.stdout
    assert "WGS 84 / UTM zone 33N" in result.stdout
    result = run("export", tmp_path / "o.zarr", tmp_path / "o.tif")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.tif").exists()


def test_demo_runs_without_any_input(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--size", 200)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "mask.zarr").exists()
    assert "water" in result.stdout
    assert "Mpix/s" in result.stdout


@pytest.fixture
def inputs(tmp_path, rng):
    tif = write_tiff(tmp_path / "s.tif", rng.integers(0, 200, (3, 40, 50)).astype(np.uint8))
    model = tmp_path / "m.pt"
    assert (
        run("init-model", "--arch", "conv", "--in-channels", 3, "--tile", 32, "--overlap", 8, "--out", model).exit_code
        == 0
    )
    return tif, model


def test_bad_inputs_give_one_clear_line(tmp_path, inputs):
    tif, model = inputs
    out = tmp_path / "o.zarr"
    text = tmp_path / "text.tif"
    text.write_text("just text")
    cases = [
        (("segment", tmp_path / "missing.tif", "--model", model, "--out", out), "does not exist"),
        (("segment", text, "--model", model, "--out", out), "cannot read"),
        (("segment", tif, "--model", text, "--out", out), "is not a model gigaseg can read"),
        (("segment", tif, "--model", model, "--out", out, "--bands", "1,2"), "takes 3 channels but 2 are selected"),
        (
            ("segment", tif, "--model", model, "--out", out, "--tile", 32, "--overlap", 17),
            "at least twice --overlap",
        ),
        (("segment", tif, "--model", model, "--out", tmp_path / "no" / "o.zarr"), "does not exist"),
        (("info", tmp_path), "not a gigaseg Zarr store"),
    ]
    for args, message in cases:
        assert_one_line_error(run(*args), message)
    assert not out.exists()


def test_segment_dry_run_prints_the_plan_and_its_memory_and_writes_nothing(tmp_path, inputs):
    tif, model = inputs
    out = tmp_path / "o.zarr"
    result = run("segment", tif, "--model", model, "--out", out, "--dry-run", "--band-memory", "1GiB")
    assert result.exit_code == 0, result.output
    assert "tiles of [32, 32]" in result.output and " host (band " in result.output and "new" in result.output
    assert not out.exists()
    assert_one_line_error(run("segment", tif, "--model", model, "--out", out, "--band-memory", "lots"), "memory size")


def test_a_dry_run_on_a_compressed_volume_decompresses_nothing(tmp_path):
    from tests.conftest import conv3d_checkpoint

    ct = organ_nifti(tmp_path / "ct.nii.gz", shape=(30, 26, 20))
    model = conv3d_checkpoint(tmp_path / "m3.pt")
    cache = tmp_path / "cache"
    result = run("segment", ct, "--model", model, "--out", tmp_path / "o.zarr", "--dry-run", "--cache", cache)
    assert result.exit_code == 0, result.output
    assert "tiles of [16, 16, 16]" in result.output
    assert not cache.exists() and not (tmp_path / "o.zarr").exists()


def test_a_band_budget_smaller_than_one_chunk_warns_in_the_dry_run(tmp_path, inputs):
    tif, model = inputs
    result = run("segment", tif, "--model", model, "--out", tmp_path / "o.zarr", "--dry-run", "--band-memory", "1KB")
    assert result.exit_code == 0, result.output
    assert "gigaseg: warning: the stitcher's band takes" in result.stderr and "--band-memory" in result.stderr


def test_a_pixel_with_one_saturated_band_is_segmented_not_nodata(tmp_path, rng, inputs):
    import zarr

    _, model = inputs
    data = rng.integers(0, 250, (3, 40, 50)).astype(np.uint8)
    data[0, 20, 25] = 255  # bright snow: red saturated, the nodata value
    data[:, :4] = 255  # nodata rows
    tif = write_tiff(tmp_path / "snow.tif", data, nodata=255)
    runs = {"all-bands": ("--out", tmp_path / "gdal.zarr"), "any-band": ("--out", tmp_path / "any.zarr")}
    for rule, out in runs.items():
        flags = () if rule == "all-bands" else ("--nodata-rule", rule)
        result = run("segment", tif, "--model", model, *out, *flags)
        assert result.exit_code == 0, result.output
    gdal = zarr.open_group(str(tmp_path / "gdal.zarr"), mode="r")
    assert gdal["mask"][20, 25] < 4  # a class
    assert (gdal["mask"][:4] == 255).all()
    assert gdal.attrs["gigaseg"]["nodata_rule"] == "all-bands"
    old = zarr.open_group(str(tmp_path / "any.zarr"), mode="r")
    assert old["mask"][20, 25] == 255
    assert old.attrs["gigaseg"]["nodata_rule"] == "any-band"
    assert np.array_equal(old["mask"][:] == 255, (data == 255).any(axis=0))
    result = run("segment", tif, "--model", model, "--out", tmp_path / "x.zarr", "--nodata-rule", "gdal")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--nodata-rule must be one of 'all-bands', 'any-band', got 'gdal'" in result.stderr


def test_existing_output_needs_overwrite(tmp_path, inputs):
    tif, model = inputs
    out = tmp_path / "o.zarr"
    assert run("segment", tif, "--model", model, "--out", out).exit_code == 0
    assert_one_line_error(run("segment", tif, "--model", model, "--out", out), "--overwrite")
    assert run("segment", tif, "--model", model, "--out", out, "--overwrite").exit_code == 0


def test_unwritable_output_directory(tmp_path, inputs):
    import os

    if os.geteuid() == 0:
        # root ignores permission bits; a read-only bind is not available either, so use
        # a directory that is a file's name instead
        blocker = tmp_path / "file"
        blocker.write_text("")
        result = run("segment", inputs[0], "--model", inputs[1], "--out", blocker / "o.zarr")
        assert_one_line_error(result, "does not exist")
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run("segment", inputs[0], "--model", inputs[1], "--out", locked / "o.zarr")
    assert_one_line_error(result, "not writable")


@pytest.mark.slow
def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gigaseg", "info", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gigaseg: error: {tmp_path / 'nope'} does not exist"


def test_volume_slice_wise_segment_info_export(tmp_path):
    import nibabel as nib

    from gigaseg.models.checkpoint import init_checkpoint

    ct = organ_nifti(tmp_path / "ct.nii.gz", shape=(20, 18, 12))
    model = tmp_path / "m2.pt"
    init_checkpoint(model, arch="conv", in_channels=3, classes=["a", "b"], tile=8, overlap=2)
    out = tmp_path / "o.zarr"
    args = ("segment", ct, "--model", model, "--out", out, "--slice-axis", 2, "--context", 1)
    result = run(*args, "--tile", "8mm", "--overlap", 2, "--cache", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    result = run("info", out)
    assert "orientation: " + "".join(nib.aff2axcodes(nib.load(ct).affine)) in result.stdout
    assert "affine_source: sform" in result.stdout
    assert run("export", out, tmp_path / "mask.nii.gz").exit_code == 0
    mask = nib.load(tmp_path / "mask.nii.gz")
    assert np.array_equal(mask.affine, nib.load(ct).affine) and mask.shape == (20, 18, 12)


def test_volume_errors_are_one_line(tmp_path, inputs):
    _, model = inputs  # a 2-D model taking 3 bands
    ct = organ_nifti(tmp_path / "ct.nii.gz", shape=(30, 30, 30))
    out = tmp_path / "o.zarr"
    args = ("segment", ct, "--model", model, "--out", out, "--cache", tmp_path / "cache")
    assert_one_line_error(run(*args), "--slice-axis")
    assert_one_line_error(run(*args, "--slice-axis", 2), "takes 3 channels")
    ct.write_bytes(ct.read_bytes()[:-500])
    assert_one_line_error(run(*args, "--slice-axis", 2), "corrupt or truncated")
    assert not out.exists()


def test_init_model_of_a_3d_architecture(tmp_path):
    result = run(
        "init-model",
        "--arch",
        "unet3d",
        "--in-channels",
        1,
        "--classes",
        3,
        "--tile",
        32,
        "--overlap",
        8,
        "--out",
        tmp_path / "u.pt",
    )
    assert result.exit_code == 0, result.output
    from gigaseg.models import load_checkpoint

    _, card = load_checkpoint(tmp_path / "u.pt")
    assert card.spatial_dims == 3

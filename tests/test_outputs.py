"""`--out mask.tif` writes a Cloud-Optimized GeoTIFF in one command; `--out x.nii.gz` a NIfTI file."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from gigaseg import InputError, OutputExistsError, SegmentOptions, segment
from gigaseg.io.export import export_mask
from gigaseg.jobs.cli import cli
from gigaseg.jobs.outputs import output_format, staging_store


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("m.zarr", "zarr"),
        ("m", "zarr"),
        ("s3://b/p/m.zarr", "zarr"),
        ("M.TIF", "cog"),
        ("m.tiff", "cog"),
        ("m.nii.gz", "nifti"),
        ("m.nii", "nifti"),
        ("out/", "zarr"),
    ],
)
def test_the_output_format_follows_the_name(name, kind):
    assert output_format(name) == kind


@pytest.mark.parametrize(
    ("output", "staging"),
    [
        ("m.tif", ".m.tif.zarr"),
        ("out/m.tif", "out/.m.tif.zarr"),
        ("/a/m.nii.gz", "/a/.m.nii.gz.zarr"),
        ("s3://b/p/m.tif", "s3://b/p/.m.tif.zarr"),
        ("s3://b/m.tif", "s3://b/.m.tif.zarr"),
    ],
)
def test_the_staging_store_sits_beside_the_output(output, staging):
    assert staging_store(output) == staging


def test_an_unknown_suffix_says_what_is_accepted():
    with pytest.raises(InputError, match=r"must end in \.zarr .*\.tif or \.tiff .*\.nii or \.nii\.gz"):
        output_format("mask.png")


def test_a_tif_output_is_a_cog_equal_to_an_exported_store(tmp_path, make_tiff, pointwise_model):
    scene = make_tiff(nodata=0)
    cog = tmp_path / "mask.tif"
    summary = segment(scene, pointwise_model, cog, SegmentOptions(chunk=128))
    assert summary.output == str(cog)
    assert not (tmp_path / ".mask.tif.zarr").exists()  # the staging store is gone
    segment(scene, pointwise_model, tmp_path / "m.zarr", SegmentOptions(chunk=128))
    export_mask(tmp_path / "m.zarr", tmp_path / "exported.tif")
    with rasterio.open(cog) as got, rasterio.open(tmp_path / "exported.tif") as want, rasterio.open(scene) as src:
        assert got.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert np.array_equal(got.read(), want.read())
        assert got.crs == src.crs and got.transform == src.transform
        assert got.nodata == want.nodata and got.colormap(1) == want.colormap(1)


def test_an_existing_tif_is_refused_and_replaced_with_overwrite(tmp_path, make_tiff, pointwise_model):
    scene, cog = make_tiff(), tmp_path / "mask.tif"
    segment(scene, pointwise_model, cog)
    with pytest.raises(OutputExistsError, match="pass overwrite"):
        segment(scene, pointwise_model, cog)
    segment(scene, pointwise_model, cog, SegmentOptions(overwrite=True))


def test_an_interrupted_tif_output_resumes_from_its_staging_store(tmp_path, make_tiff, pointwise_model, monkeypatch):
    scene, cog = make_tiff(shape=(3, 300, 400)), tmp_path / "mask.tif"
    options = SegmentOptions(block=128, chunk=128)
    monkeypatch.setenv("GIGASEG_FAIL_WRITE", f"{tmp_path / 'fired'}:1,1")
    with pytest.raises(OSError, match="injected"):
        segment(scene, pointwise_model, cog, options)
    assert not cog.exists() and (tmp_path / staging_store("mask.tif")).exists()
    segment(scene, pointwise_model, cog, SegmentOptions(block=128, chunk=128, resume=True))
    assert cog.exists() and not (tmp_path / ".mask.tif.zarr").exists()
    segment(scene, pointwise_model, tmp_path / "whole.tif", options)
    with rasterio.open(cog) as a, rasterio.open(tmp_path / "whole.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_errors_of_a_tif_output_name_the_tif_and_where_it_is_staged(tmp_path, make_tiff, pointwise_model):
    from gigaseg.errors import StoreLockedError
    from gigaseg.io.lock import StoreLock

    cog = tmp_path / "mask.tif"
    staging = staging_store(str(cog))
    with StoreLock(staging), pytest.raises(StoreLockedError) as refused:
        segment(make_tiff(), pointwise_model, cog)
    assert str(refused.value).startswith(f"{cog} (staged in {staging}) is being written by ")


def test_the_cli_writes_a_cog_and_refuses_an_unknown_suffix(tmp_path, make_tiff, pointwise_model):
    scene = make_tiff()
    ok = CliRunner().invoke(
        cli, ["segment", str(scene), "--model", str(pointwise_model), "--out", str(tmp_path / "m.tif")]
    )
    assert ok.exit_code == 0, ok.output
    with rasterio.open(tmp_path / "m.tif") as got:
        assert got.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    bad = CliRunner().invoke(
        cli, ["segment", str(scene), "--model", str(pointwise_model), "--out", str(tmp_path / "m.png")]
    )
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1
    assert "must end in .zarr" in bad.stderr and not (tmp_path / "m.png").exists()


@pytest.mark.slow
def test_a_job_writes_one_cog_per_scene_with_refinement_and_tta(tmp_path, make_tiff, pointwise_model):
    """A job file reaches the options the CLI has (refine, tta) and writes COGs by the name's suffix."""
    from gigaseg import load_job, run_job

    for name in ("a.tif", "b.tif"):
        make_tiff(name=name, shape=(3, 200, 260))
    (tmp_path / "job.yaml").write_text(
        f"inputs: ['?.tif']\nmodel: {pointwise_model.name}\ntta: true\n"
        "refine: {method: superpixel}\n"
        "output: {dir: out, name: '{stem}_mask.tif'}\ncluster: {kind: local, workers: 1}\n"
    )
    report = run_job(load_job(tmp_path / "job.yaml"), base=tmp_path)
    assert report.ok, [s.error for s in report.scenes]
    for stem in ("a", "b"):
        cog = tmp_path / "out" / f"{stem}_mask.tif"
        with rasterio.open(cog) as got:
            assert got.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            labels = got.read(1)
        assert not (tmp_path / "out" / f".{stem}_mask.tif.zarr").exists()
        alone = tmp_path / f"{stem}_alone.tif"
        options = SegmentOptions(tta=True, refine=load_job(tmp_path / "job.yaml").options(False).refine)
        segment(tmp_path / f"{stem}.tif", pointwise_model, alone, options)
        with rasterio.open(alone) as want:
            assert np.array_equal(labels, want.read(1))

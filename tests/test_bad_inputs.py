"""The bad-input corpus: every way a real input goes wrong, each with its exit code and one line.

Nothing here may print a traceback or leave a store that claims to be complete.
"""

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from rasterio.transform import Affine

from gigaseg.jobs.cli import cli
from gigaseg.models import ModelCard, create_model
from gigaseg.models.checkpoint import init_checkpoint
from tests.conftest import write_tiff


class Arbitrary:
    """Any class: unpickling one may run code, so checkpoints holding one are refused."""


# output.name of a job file: each escapes output.dir or is not a plain {stem} template
OUTPUT_NAMES = {
    "parent": "../../escaped_{stem}.zarr",
    "absolute": "/tmp/escaped_{stem}.zarr",
    "unknown": "{foo}.zarr",
    "unclosed": "{stem",
    "attribute": "{stem.__class__.__mro__}",
    "index": "{stem[0]}.zarr",
    "conversion": "{stem!r}.zarr",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    good = write_tiff(d / "good.tif", rng.integers(0, 200, (3, 80, 90)).astype(np.uint8))
    init_checkpoint(
        d / "m.pt", arch="conv", in_channels=3, classes=["a", "b"], tile=32, overlap=8, mean=[100.0] * 3, std=[50.0] * 3
    )
    init_checkpoint(d / "m3d.pt", arch="conv3d", in_channels=1, classes=["a", "b"], tile=16, overlap=4, spatial_dims=3)
    (d / "text.tif").write_text("this is not a raster")
    (d / "empty.tif").write_bytes(b"")
    data = good.read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 3])
    (d / "folder.tif").mkdir()
    (d / "notes.pt").write_text("not a checkpoint")
    torch.save({"format": "gigaseg-checkpoint/1", "card": Arbitrary()}, d / "pickled.pt")
    (d / "...tif").write_bytes(good.read_bytes())  # its stem is '..'
    card = ModelCard(arch="conv", in_channels=3, classes=["a", "b"])
    torch.save(create_model(ModelCard(arch="unet", in_channels=3, classes=["a", "b"])).state_dict(), d / "unet.pt")
    torch.save(
        {
            "format": "gigaseg-checkpoint/1",
            "card": {**card.to_dict(), "in_channels": 5},
            "state_dict": create_model(card).state_dict(),
        },
        d / "lying.pt",
    )
    (d / "card.json").write_text('{"arch": "conv", "in_channels": 3, "classes": ["a", "b"]}')
    vol = rng.normal(0, 1, (20, 22, 18)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0])), d / "vol.nii")
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), np.eye(4)), d / "vol4d.nii")
    nib.save(nib.Nifti1Image(np.stack([np.stack([vol, vol], -1)] * 2, -1), np.eye(4)), d / "vol5d.nii")
    write_raw_nifti(d / "singular.nii", vol, sform=np.zeros((3, 4)))
    with gzip.open(d / "ok.nii.gz", "wb") as f:
        f.write((d / "vol.nii").read_bytes())
    raw = (d / "ok.nii.gz").read_bytes()
    (d / "corrupt.nii.gz").write_bytes(raw[:200] + b"\x00" * 50 + raw[250 : len(raw) // 2])
    write_raw_nifti(d / "huge.nii", vol, shape=(2000, 2000, 2000), data=vol.tobytes()[:1000])
    for name, text in {
        "unknown.yaml": "inputs: [good.tif]\nmodel: m.pt\ntiling: {tile: 32, colour: red}\n",
        "wrongtype.yaml": "inputs: [good.tif]\nmodel: m.pt\ncluster: {workers: many}\n",
        "noglob.yaml": "inputs: ['nowhere/*.tif']\nmodel: m.pt\n",
        **{
            f"name-{case}.yaml": f"inputs: [good.tif]\nmodel: m.pt\noutput: {{dir: out, name: '{name}'}}\n"
            for case, name in OUTPUT_NAMES.items()
        },
        "dots.yaml": "inputs: ['...tif']\nmodel: m.pt\noutput: {dir: out, name: '{stem}'}\n",
        "samename.yaml": "inputs: [good.tif, truncated.tif]\nmodel: m.pt\noutput: {name: mask.zarr}\n",
        "failing.yaml": "inputs: [good.tif, empty.tif]\nmodel: m.pt\n",
        "badrule.yaml": "inputs: [good.tif]\nmodel: m.pt\nnodata_rule: gdal\n",
    }.items():
        (d / name).write_text(text)
    # a finished mask of good.tif, for gigaseg evaluate
    CliRunner().invoke(cli, ["segment", str(good), "--model", str(d / "m.pt"), "--out", str(d / "mask.zarr")])
    (d / "notes.geojson").write_text("not a vector file")
    return d


def write_raw_nifti(path, vol, *, sform=None, shape=None, data=None):
    """A NIfTI-1 file written byte by byte, so its header can lie (nibabel's save would fix it)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(vol.dtype)
    header.set_data_shape(shape or vol.shape)
    if sform is not None:
        header["sform_code"], header["qform_code"] = 1, 0
        header["srow_x"], header["srow_y"], header["srow_z"] = sform
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\x00" * 4 + (vol.tobytes() if data is None else data))


FAILURES = [
    # (arguments, message in the one stderr line)
    (["segment", "{d}/missing.tif", "--model", "{d}/m.pt"], "does not exist"),
    (["segment", "{d}/folder.tif", "--model", "{d}/m.pt"], "is a directory"),
    (["segment", "{d}/text.tif", "--model", "{d}/m.pt"], "cannot read"),
    (["segment", "{d}/empty.tif", "--model", "{d}/m.pt"], "cannot read"),
    (["segment", "{d}/truncated.tif", "--model", "{d}/m.pt"], "cannot read"),
    (["segment", "{d}/good.tif", "--model", "{d}/notes.pt"], "is not a model gigaseg can read"),
    (["segment", "{d}/good.tif", "--model", "{d}/missing.pt"], "does not exist"),
    (["segment", "{d}/good.tif", "--model", "{d}/unet.pt", "--card", "{d}/card.json"], "do not fit"),
    (["segment", "{d}/good.tif", "--model", "{d}/lying.pt"], "do not fit"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--bands", "1,2"], "takes 3 channels but 2 are selected"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--bands", "1,2,9"], "do not exist"),
    (
        ["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--tile", "32", "--overlap", "17"],
        "at least twice --overlap",
    ),
    (["segment", "{d}/good.tif", "--model", "{d}/m3d.pt"], "3-D"),
    (["segment", "{d}/vol.nii", "--model", "{d}/m.pt"], "--slice-axis"),
    (["segment", "{d}/vol4d.nii", "--model", "{d}/m3d.pt"], "--volume"),
    (["segment", "{d}/vol5d.nii", "--model", "{d}/m3d.pt"], "holds 4 volumes"),
    (["segment", "{d}/corrupt.nii.gz", "--model", "{d}/m3d.pt"], "corrupt or truncated"),
    (["segment", "{d}/huge.nii", "--model", "{d}/m3d.pt"], "truncated"),
    (["segment", "{d}/ok.nii.gz", "--model", "{d}/m3d.pt", "--cache-max", "-1"], "--cache-max: a memory size must be"),
    (
        ["segment", "{d}/ok.nii.gz", "--model", "{d}/m3d.pt", "--cache-max", "lots"],
        "--cache-max: a memory size must be",
    ),
    # sizes that cannot be, refused before the store exists
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--tile", "100000"], "of memory, more than"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--batch-size", "-3"], "--batch-size must be"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--batch-size", "0"], "--batch-size must be"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--block", "0"], "--block must be"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--chunk", "-64"], "--chunk must be"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--tile", "0"], "--tile must be at least"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--overlap", "-8"], "--overlap must be at least"),
    (["segment", "{d}/good.tif", "--model", "{d}/m.pt", "--tile", "-320m"], "--tile must be at least"),
    (["run", "{d}/unknown.yaml"], "unknown key 'tiling.colour'"),
    (["run", "{d}/wrongtype.yaml"], "cluster.workers"),
    (["run", "{d}/noglob.yaml", "--dry-run"], "1 of 1 scenes would fail"),  # the run fails that scene alone
    (["run", "{d}/badrule.yaml"], "nodata_rule: Input should be 'all-bands' or 'any-band'"),
    (["run", "{d}/missing.yaml"], "does not exist"),
    (["run", "{d}/name-parent.yaml"], "must be a file name inside output.dir, not a path"),
    (["run", "{d}/name-parent.yaml", "--dry-run"], "must be a file name inside output.dir, not a path"),
    (["run", "{d}/name-absolute.yaml"], "must be a file name inside output.dir, not a path"),
    (["run", "{d}/name-unknown.yaml"], "uses {foo}; the only field allowed is {stem}"),
    (["run", "{d}/name-unclosed.yaml"], "is not a name template"),
    (["run", "{d}/name-attribute.yaml", "--dry-run"], "uses {stem.__class__.__mro__}; the only field allowed"),
    (["run", "{d}/name-index.yaml"], "uses {stem[0]}; the only field allowed is {stem}"),
    (["run", "{d}/name-conversion.yaml"], "uses {stem!r}; the only field allowed is {stem}"),
    (["run", "{d}/dots.yaml", "--dry-run"], "is not inside output.dir"),
    (["run", "{d}/samename.yaml", "--dry-run"], "both map to output"),
    (["run", "{d}/failing.yaml", "--dry-run"], "1 of 2 scenes would fail"),
    (["segment", "{d}/good.tif", "--model", "{d}/pickled.pt"], "holds a pickled Python object (tests."),
    (["info", "{d}/good.tif"], "not a gigaseg Zarr store"),
    (["export", "{d}/missing.zarr", "{d}/x.tif"], "missing.zarr does not exist"),
    (["evaluate", "{d}/missing.zarr", "--labels", "{d}/good.tif"], "missing.zarr does not exist"),
    (["evaluate", "{d}/mask.zarr", "--labels", "{d}/missing.tif"], "does not exist"),
    (["evaluate", "{d}/mask.zarr", "--labels", "{d}/missing.gpkg"], "do not exist"),
    (["evaluate", "{d}/mask.zarr", "--labels", "{d}/text.tif"], "cannot read"),
    (["evaluate", "{d}/mask.zarr", "--labels", "{d}/notes.geojson"], "as vector labels"),
    (["evaluate", "{d}/mask.zarr", "--labels", "{d}/good.tif"], "not a class of the mask"),
]


@pytest.mark.parametrize(
    ("args", "message"), FAILURES, ids=[f"{a[0]}-{a[1].split('/')[-1]}-{i}" for i, (a, _) in enumerate(FAILURES)]
)
def test_bad_input_is_one_clear_line(corpus, tmp_path, args, message):
    out = tmp_path / "out.zarr"
    argv = [a.format(d=corpus) for a in args] + (["--out", str(out)] if args[0] == "segment" else [])
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if not line.startswith("gigaseg: warning:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("gigaseg: error:")
    assert message in errors[0], errors[0]
    assert "Traceback" not in result.output
    assert "weights_only" not in result.output  # torch's advice to load untrusted pickles
    # nothing left that looks complete, nor anything that blocks the rerun
    assert not out.exists() and not (tmp_path / "out.zarr.lock").exists()


def test_existing_output_without_overwrite(corpus, tmp_path):
    args = ["segment", str(corpus / "good.tif"), "--model", str(corpus / "m.pt"), "--out", str(tmp_path / "o.zarr")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "exists; pass --overwrite to replace it or --resume" in result.stderr


ODD_BUT_VALID = {
    "one-pixel": (np.full((3, 1, 1), 9, np.uint8), {}, None),
    "smaller-than-a-tile": (np.ones((3, 5, 7), np.uint8), {}, None),
    "no-crs": (np.ones((3, 20, 20), np.uint8), {"crs": None, "transform": Affine.identity()}, "no CRS"),
    "rotated": (
        np.ones((3, 20, 20), np.uint8),
        {"transform": Affine.translation(1000, 2000) @ Affine.rotation(20) @ Affine.scale(10, -10)},
        None,
    ),
    **{
        dtype: (np.arange(3 * 30 * 40).reshape(3, 30, 40).astype(dtype), {}, None)
        for dtype in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
    },
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_VALID))
def test_odd_but_valid_input_works(corpus, tmp_path, case):
    data, profile, warning = ODD_BUT_VALID[case]
    tif = write_tiff(tmp_path / "odd.tif", data, **profile)
    result = CliRunner().invoke(
        cli, ["segment", str(tif), "--model", str(corpus / "m.pt"), "--out", str(tmp_path / "o.zarr")]
    )
    assert result.exit_code == 0, result.output
    if warning:
        assert f"gigaseg: warning: {tif} has {warning}" in result.stderr
    mask = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["mask"][:]
    assert mask.shape == data.shape[1:]
    assert (mask < 2).all()


def test_nan_and_inf_are_nodata(corpus, tmp_path):
    data = np.ones((3, 20, 30), np.float32)
    data[0, 3, 4], data[1, 5, 6], data[2, 7, 8] = np.nan, np.inf, -np.inf
    tif = write_tiff(tmp_path / "nan.tif", data)
    result = CliRunner().invoke(
        cli, ["segment", str(tif), "--model", str(corpus / "m.pt"), "--out", str(tmp_path / "o.zarr")]
    )
    assert result.exit_code == 0, result.output
    mask = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["mask"][:]
    assert mask[3, 4] == mask[5, 6] == mask[7, 8] == 255
    assert (mask < 255).sum() == 20 * 30 - 3


def test_singular_affine_warns_and_falls_back(corpus, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["segment", str(corpus / "singular.nii"), "--model", str(corpus / "m3d.pt"), "--out", str(tmp_path / "o.zarr")],
    )
    assert result.exit_code == 0, result.output
    assert "gigaseg: warning:" in result.stderr
    assert "singular" in result.stderr


def test_incomplete_store_is_refused_by_export_and_flagged_by_info(corpus, tmp_path):
    out = tmp_path / "o.zarr"
    CliRunner().invoke(
        cli,
        [
            "segment",
            str(corpus / "good.tif"),
            "--model",
            str(corpus / "m.pt"),
            "--out",
            str(out),
            "--block",
            "32",
            "--chunk",
            "32",
        ],
    )
    group = zarr.open_group(str(out), mode="r+")
    group["blocks_done"][0, 0] = 0
    group.attrs["gigaseg"] = {**group.attrs["gigaseg"], "complete": False}
    shutil.rmtree(out / ".zmetadata", ignore_errors=True)
    result = CliRunner().invoke(cli, ["export", str(out), str(tmp_path / "o.tif")])
    assert result.exit_code == 2
    assert "incomplete" in result.stderr
    assert not (tmp_path / "o.tif").exists()
    result = CliRunner().invoke(cli, ["info", str(out)])
    assert "INCOMPLETE" in result.stderr
    result = CliRunner().invoke(cli, ["export", str(out), str(tmp_path / "o.tif"), "--allow-incomplete"])
    assert result.exit_code == 0
    assert "INCOMPLETE" in result.stderr


def test_metres_on_a_geographic_scene_are_measured_at_its_latitude(tmp_path):
    """The issue's 84.8 TiB: --tile 5120m read as 5120 degrees on EPSG:4326."""
    rng = np.random.default_rng(3)
    # ~10 m pixels at 50 N: 1e-4 degrees of longitude (7.2 m) by 9e-5 of latitude (10 m)
    transform = Affine(1e-4, 0, 10.0, 0, -9e-5, 50.0)
    tif = write_tiff(
        tmp_path / "geo.tif", rng.integers(0, 200, (3, 200, 260)).astype(np.uint8), crs="EPSG:4326", transform=transform
    )
    init_checkpoint(tmp_path / "m.pt", arch="conv", in_channels=3, classes=["a", "b"], tile=32, overlap=8)
    out = tmp_path / "o.zarr"
    result = CliRunner().invoke(
        cli,
        [
            "segment",
            str(tif),
            "--model",
            str(tmp_path / "m.pt"),
            "--out",
            str(out),
            "--tile",
            "640m",
            "--overlap",
            "160m",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "in degrees: 640m, 160m measured at its centre latitude" in result.stderr
    plan = zarr.open_group(str(out), mode="r").attrs["gigaseg"]["plan"]
    # 640 m is ~64 rows of 10 m and ~89 columns of 7.2 m (to the model's stride of 1)
    assert plan["tile"] == [64, 89] and plan["overlap"] == [16, 22]

"""The model's own grid: card keys spacing, orientation and resolution.

The model sees the scene resampled to the voxel size it was trained at; its
blended probabilities come back to the scene's voxels before the argmax. A
1x1 model makes that checkable voxel by voxel against whole-volume
interpolation with torch, whatever the blocks, chunks and tiles.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from rasterio.transform import from_origin
from torch import nn

import gigaseg
from gigaseg.errors import GigasegWarning, InputError
from gigaseg.tiler.grid import Box
from gigaseg.tiler.regrid import Regrid, resample

from .conftest import conv3d_checkpoint, needs_cuda, one_error, organ_nifti, run, write_nifti, write_tiff

ZOOMS = (0.8, 0.9, 1.3)


def pointwise(channels: int = 1, classes: int = 3, *, dims: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = (nn.Conv3d if dims == 3 else nn.Conv2d)(channels, classes, 1)
    with torch.no_grad():
        net.weight.mul_(4)  # every class wins somewhere
    return net.eval()


def smooth_volume(path, shape=(40, 36, 30), affine=None):
    z = np.indices(shape).astype(np.float32)
    rng = np.random.default_rng(0)
    data = np.sin(z[0] / 5) + np.cos(z[1] / 4) + z[2] / 15 - 1 + rng.normal(0, 0.05, shape)
    return write_nifti(path, data.astype(np.float32), np.diag([*ZOOMS, 1]) if affine is None else affine)


def card3d(**keys):
    return {"arch": "x", "in_channels": 1, "classes": ["a", "b", "c"], "spatial_dims": 3, "tile": 16, **keys}


def reference(volume: np.ndarray, net: nn.Module, model_shape) -> np.ndarray:
    """The whole volume at the model's voxels, scored, and brought back: (classes, i, j, k)."""
    x = torch.from_numpy(volume.astype(np.float32))[None, None]
    seen = F.interpolate(x, size=tuple(model_shape), mode="trilinear", align_corners=False)
    with torch.no_grad():
        p = torch.softmax(net(seen), 1)
    return F.interpolate(p, size=volume.shape, mode="trilinear", align_corners=False)[0].numpy()


# ---------------------------------------------------------------------------- the arithmetic


def test_resampling_to_the_same_grid_is_the_identity():
    values = torch.randn(2, 7, 9, 11)
    box = Box((0, 0, 0), (7, 9, 11))
    assert Regrid.between((7, 9, 11), (1.0, 0.5, 2.0), (1.0, 0.5, 2.0)).is_identity
    assert resample(values, box, box, ((7, 9, 11), (7, 9, 11))).equal(values)


def test_resampling_a_box_equals_resampling_the_whole_and_cutting_the_box():
    values = torch.randn(3, 17, 23, 29)
    regrid = Regrid((17, 23, 29), (11, 40, 29))
    whole = resample(
        values, Box((0, 0, 0), (17, 23, 29)), Box((0, 0, 0), regrid.model_shape), (regrid.shape, regrid.model_shape)
    )
    expected = F.interpolate(values[None], size=regrid.model_shape, mode="trilinear", align_corners=False)[0]
    np.testing.assert_allclose(whole.numpy(), expected.numpy(), atol=1e-5)
    for start, stop in [((3, 5, 2), (9, 30, 20)), ((0, 0, 0), (1, 1, 1)), ((10, 39, 28), (11, 40, 29))]:
        box = Box(start, stop)
        reads = regrid.to_scene(box)
        part = resample(values[(slice(None), *reads.slices())], reads, box, (regrid.shape, regrid.model_shape))
        assert part.equal(whole[(slice(None), *box.slices())])


# ---------------------------------------------------------------------------- volumes


@pytest.mark.parametrize(("block", "chunk", "piece"), [(None, None, None), (16, 8, None), (32, 16, 1)])
def test_a_model_at_its_own_spacing_sees_the_volume_resampled_and_the_mask_comes_back(
    tmp_path, monkeypatch, block, chunk, piece
):
    if piece:  # chunks brought back one row at a time, as many classes would be
        monkeypatch.setattr("gigaseg.tiler.regrid.PIECE_BYTES", piece)
    path = smooth_volume(tmp_path / "v.nii")
    net = pointwise()
    card = card3d(overlap=4, spacing=[1.5, 1.2, 1.0])
    options = gigaseg.SegmentOptions(probabilities="float32", block=block, chunk=chunk)
    gigaseg.segment(path, net, tmp_path / "o.zarr", options, card=card)
    store = zarr.open_group(str(tmp_path / "o.zarr"))
    volume = np.asarray(nib.load(path).dataobj)
    model_shape = [round(n * s / m) for n, s, m in zip(volume.shape, ZOOMS, (1.5, 1.2, 1.0), strict=True)]
    expected = reference(volume, net, model_shape)
    assert store["mask"].shape == volume.shape[::-1]  # the scene's voxels, (k, j, i)
    np.testing.assert_array_equal(store["mask"][:], expected.argmax(0).T)
    np.testing.assert_allclose(store["probabilities"][:], expected.transpose(0, 3, 2, 1), atol=1e-5)
    grid = store.attrs["gigaseg"]["model_input"]["model_grid"]
    assert grid["shape"] == model_shape[::-1]  # the grid the model saw, recorded in the store


def test_a_model_whose_spacing_is_the_volumes_gives_the_same_bits_as_one_without(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii", shape=(30, 34, 22))
    model = conv3d_checkpoint(tmp_path / "m.pt", arch_kwargs={"kernel_size": 3, "layers": 2})
    zooms = [float(z) for z in nib.load(path).header.get_zooms()[:3]]
    gigaseg.segment(path, model, tmp_path / "plain.zarr", gigaseg.SegmentOptions(probabilities="float32"))
    gigaseg.segment(
        path, model, tmp_path / "same.zarr", gigaseg.SegmentOptions(probabilities="float32"), card={"spacing": zooms}
    )
    plain, same = zarr.open_group(str(tmp_path / "plain.zarr")), zarr.open_group(str(tmp_path / "same.zarr"))
    np.testing.assert_array_equal(plain["probabilities"][:], same["probabilities"][:])
    assert "model_grid" not in same.attrs["gigaseg"]["model_input"]


def test_orientation_shows_the_model_its_axes_and_the_mask_lies_on_the_input(tmp_path):
    """An LPS-stored volume seen as RAS at 1.5 mm by a 3x3x3 network: against nibabel's reorientation."""
    affine = np.diag([-0.8, -0.9, 1.3, 1.0])
    path = smooth_volume(tmp_path / "lps.nii", shape=(36, 32, 20), affine=affine)
    torch.manual_seed(1)
    net = nn.Conv3d(1, 3, 3, padding=1, padding_mode="replicate").eval()
    card = card3d(tile=48, overlap=8, spacing=[1.5, 1.5, 1.5], orientation="RAS")
    gigaseg.segment(path, net, tmp_path / "o.zarr", card=card)
    mask = zarr.open_group(str(tmp_path / "o.zarr"))["mask"][:].T  # (i, j, k) of the file
    volume = np.asarray(nib.load(path).dataobj)
    to_ras = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    ras = apply_orientation(volume, to_ras)
    shape = [round(n * z / 1.5) for n, z in zip(ras.shape, (0.8, 0.9, 1.3), strict=True)]
    expected = apply_orientation(
        reference(ras, net, shape).argmax(0), ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))
    )
    assert (mask == expected).mean() > 0.99  # tiles' mirrored edges against one whole-volume pass


def test_a_raster_at_its_models_resolution(tmp_path):
    rng = np.random.default_rng(2)
    data = (rng.random((3, 90, 120)) * 40 + np.linspace(0, 200, 120)).astype(np.uint8)
    tif = write_tiff(tmp_path / "s.tif", data, transform=from_origin(500000, 4100000, 10, 10))
    net = pointwise(3, 4, dims=2)
    card = {"arch": "x", "in_channels": 3, "classes": list("abcd"), "tile": 32, "overlap": 4, "resolution": 25.0}
    card["normalize"] = [{"scale": 1 / 100, "offset": -1.0}]
    gigaseg.segment(tif, net, tmp_path / "o.zarr", card=card)
    mask = zarr.open_group(str(tmp_path / "o.zarr"))["mask"][:]
    x = torch.from_numpy(data.astype(np.float32) / 100 - 1)[None]
    seen = F.interpolate(x, size=(36, 48), mode="bilinear", align_corners=False)
    with torch.no_grad():
        p = torch.softmax(net(seen), 1)
    expected = F.interpolate(p, size=(90, 120), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert mask.shape == (90, 120)
    assert (mask == expected).mean() > 0.999  # float32 ties aside


def test_the_dry_run_says_the_model_grid_and_its_memory(tmp_path):
    path = smooth_volume(tmp_path / "v.nii")
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(pointwise()), str(model))
    (tmp_path / "net.ts.card.json").write_text(json.dumps(card3d(overlap=4, spacing=[1.5, 1.2, 1.0])))
    result = run("segment", path, "--model", model, "--out", tmp_path / "o.zarr", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "shape [30, 36, 40] seen by the model as [39, 27, 21]" in result.output
    assert "peak per worker" in result.output and not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"spacing": [0, 1, 1]}, "spacing must be positive numbers"),
        ({"spacing": [1, 1]}, "gives 2 sizes for a 3-D model"),
        ({"orientation": "RAX"}, "orientation must be a code such as RAS"),
        ({"resolution": 10.0}, "gives resolution (CRS units) but"),
        ({"spacing": [1.0, 1.0, 1.0], "resolution": 2.0}, "keep one"),
        ({"spacing": [0.001, 0.001, 0.001]}, "needs a band of"),
    ],
)
def test_a_bad_model_grid_is_one_line_and_nothing_is_created(tmp_path, keys, words):
    path = smooth_volume(tmp_path / "v.nii")
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(pointwise()), str(model))
    (tmp_path / "card.json").write_text(json.dumps(card3d(overlap=4, **keys)))
    result = run("segment", path, "--model", model, "--card", tmp_path / "card.json", "--out", tmp_path / "o.zarr")
    one_error(result, words)
    assert not (tmp_path / "o.zarr").exists()


def test_spacing_on_a_raster_and_on_slice_wise_models_is_refused(tmp_path):
    tif = write_tiff(tmp_path / "s.tif", np.zeros((3, 40, 50), np.uint8))
    card = {"arch": "x", "in_channels": 3, "classes": list("ab"), "tile": 32, "overlap": 4, "spacing": 1.0}
    with pytest.raises(InputError, match="gives spacing"):
        gigaseg.segment(tif, pointwise(3, 2, dims=2), tmp_path / "o.zarr", card=card)
    path = smooth_volume(tmp_path / "v.nii")
    card = {**card, "in_channels": 1, "spacing": [1.0, 1.0]}
    with pytest.raises(InputError, match="slice by slice"):
        gigaseg.segment(
            path, pointwise(1, 2, dims=2), tmp_path / "o.zarr", gigaseg.SegmentOptions(slice_axis=2), card=card
        )
    assert not (tmp_path / "o.zarr").exists()


def test_tiles_may_step_by_half_a_tile(tmp_path):
    """tile == 2 x overlap (nnU-Net's step 0.5): every voxel still blends to its own scores."""
    path = smooth_volume(tmp_path / "v.nii")
    net = pointwise()
    for name, overlap in (("half", 8), ("eighth", 2)):
        gigaseg.segment(
            path,
            net,
            tmp_path / f"{name}.zarr",
            gigaseg.SegmentOptions(probabilities="float32"),
            card=card3d(overlap=overlap),
        )
    half, eighth = (zarr.open_group(str(tmp_path / f"{n}.zarr"))["probabilities"][:] for n in ("half", "eighth"))
    np.testing.assert_allclose(half, eighth, atol=1e-6)


@needs_cuda
def test_on_a_gpu_the_model_grid_gives_the_cpus_probabilities(tmp_path):
    """The resampling both ways runs on the device: probabilities within autocast tolerance."""
    path = smooth_volume(tmp_path / "v.nii")
    card = card3d(overlap=4, spacing=[1.5, 1.2, 1.0])
    for device in ("cpu", "cuda"):
        options = gigaseg.SegmentOptions(probabilities="float32", device=device, block=32, chunk=16)
        gigaseg.segment(path, pointwise(), tmp_path / f"{device}.zarr", options, card=card)
    cpu, gpu = (zarr.open_group(str(tmp_path / f"{d}.zarr"))["probabilities"][:] for d in ("cpu", "cuda"))
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)


def test_a_resume_with_another_model_grid_is_refused(tmp_path):
    path = smooth_volume(tmp_path / "v.nii")
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(pointwise()), str(model))
    for name, spacing in (("a", [1.5, 1.2, 1.0]), ("b", [1.5, 1.5, 1.5])):
        (tmp_path / f"{name}.json").write_text(json.dumps(card3d(overlap=4, spacing=spacing)))
    out = tmp_path / "o.zarr"
    assert run("segment", path, "--model", model, "--card", tmp_path / "a.json", "--out", out).exit_code == 0
    again = run("segment", path, "--model", model, "--card", tmp_path / "a.json", "--out", out, "--resume")
    assert again.exit_code == 0, again.output
    result = run("segment", path, "--model", model, "--card", tmp_path / "b.json", "--out", out, "--resume")
    one_error(result, "model_grid")


def test_on_a_model_grid_nodata_stays_nodata_and_every_valid_voxel_gets_a_label(tmp_path):
    """Validity is the scene's own, not a resampled guess: isolated NaN voxels, NaN stripes, a NaN corner."""
    shape = (40, 36, 30)
    z = np.indices(shape).astype(np.float32)
    data = np.sin(z[0] / 5) + np.cos(z[1] / 4)
    data[0, 0, 0] = data[17, 5, 9] = np.nan
    data[::2, 20:24, :] = np.nan  # stripes thinner than a model voxel
    data[30:, 30:, 25:] = np.nan
    path = write_nifti(tmp_path / "nan.nii", data.astype(np.float32), np.diag([*ZOOMS, 1]))
    gigaseg.segment(path, pointwise(), tmp_path / "o.zarr", card=card3d(overlap=4, spacing=[2.0, 2.0, 2.0]))
    mask = zarr.open_group(str(tmp_path / "o.zarr"))["mask"][:].T  # (i, j, k)
    np.testing.assert_array_equal(mask == 255, np.isnan(data))


def test_nodata_of_a_raster_survives_the_model_grid(tmp_path):
    rng = np.random.default_rng(4)
    data = (rng.random((3, 90, 120)) * 200 + 20).astype(np.uint8)
    data[:, :, :7] = 0  # a nodata border
    data[:, ::6, 40:60] = 0  # stripes of nodata, as Landsat 7's SLC-off
    tif = write_tiff(tmp_path / "s.tif", data, transform=from_origin(500000, 4100000, 10, 10), nodata=0)
    card = {"arch": "x", "in_channels": 3, "classes": list("abcd"), "tile": 32, "overlap": 4, "resolution": 30.0}
    gigaseg.segment(tif, pointwise(3, 4, dims=2), tmp_path / "o.zarr", card=card)
    mask = zarr.open_group(str(tmp_path / "o.zarr"))["mask"][:]
    np.testing.assert_array_equal(mask == 255, (data == 0).all(axis=0))


def test_a_model_grid_far_from_the_input_runs_with_one_warning(tmp_path):
    path = smooth_volume(tmp_path / "v.nii")
    with pytest.warns(GigasegWarning, match="check the card.s spacing"):
        gigaseg.segment(path, pointwise(), tmp_path / "o.zarr", card=card3d(overlap=4, spacing=[12.0, 12.0, 12.0]))
    assert zarr.open_group(str(tmp_path / "o.zarr"))["mask"].shape == (30, 36, 40)


def test_the_dry_run_counts_the_model_grids_tiles(tmp_path):
    from gigaseg.jobs.preflight import scene_footprint
    from gigaseg.jobs.scene import SceneSpec

    path = smooth_volume(tmp_path / "v.nii")
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(pointwise()), str(model))
    card = card3d(overlap=4, spacing=[0.4, 0.45, 0.65])  # twice finer: 8 times the voxels
    summary, _ = scene_footprint(SceneSpec(str(path), str(model), str(tmp_path / "o.zarr"), card=card))
    halos = float(summary.split("(x")[1].split(" ")[0])
    work = float(summary.split("with halos, ")[1].split(" ")[0])
    assert halos >= 1.0 and work >= 8 * 40 * 36 * 30 / 1e6 * 0.9

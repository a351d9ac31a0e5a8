"""Volumes end to end: NIfTI on disk -> tiled 3-D or slice-wise inference -> Zarr -> NIfTI.

Oracles: the network run once over the whole volume (3-D), or once per whole
slice (slice-wise), on the array nibabel gives (reoriented to RAS with
``canonical``). Tiled inference equals it exactly for point-wise models, and
for wider kernels on every voxel whose receptive field each covering tile sees
in full (the "exact region" below).
"""

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from gigaseg import SegmentOptions, segment
from gigaseg.errors import InputError
from gigaseg.io.export import export_mask
from gigaseg.models import load_checkpoint
from gigaseg.models.checkpoint import init_checkpoint
from gigaseg.models.intensity import Intensity
from gigaseg.tiler import TileGrid
from tests.conftest import OBLIQUE, conv3d_checkpoint, oblique_affine, organ_nifti, write_nifti
from tests.test_io_export_nifti import assert_itk_overlays

RAS = np.array([[0, 1], [1, 1], [2, 1]])
# Axis i runs along S, j along L, k along P: nothing like RAS, and flipped twice.
PERMUTED = np.array([[0, 0, 1.2, 0], [-0.9, 0, 0, 0], [0, -1.1, 0, 0], [0, 0, 0, 1.0]])[[2, 0, 1, 3]]


def to_model(data, affine, canonical):
    """``(C, i, j, k)`` -> what the network sees: nibabel order, RAS if canonical."""
    if not canonical:
        return data
    ornt = io_orientation(affine)
    return np.stack([apply_orientation(c, ornt) for c in data])


def to_voxels(scores, affine, canonical):
    if not canonical:
        return scores
    back = ornt_transform(RAS, io_orientation(affine))
    return np.stack([apply_orientation(c, back) for c in scores])


def run_network(model, x):
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x, np.float32))), 1).numpy()


def whole_volume(model_path, path, *, canonical=False, volume=0, normalize=None):
    """The network once over the whole volume: scores in (class, i, j, k)."""
    model, card = load_checkpoint(model_path)
    data = nib.load(path).get_fdata(dtype=np.float32)
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0) if volume == "all" else data[None, ..., volume]
    else:
        data = data[None]
    x = (normalize or card.normalize_tiles)(to_model(data, nib.load(path).affine, canonical)[None].copy())
    return to_voxels(run_network(model, x)[0], nib.load(path).affine, canonical)


def slice_by_slice(model_path, path, axis, *, canonical=False, context=0):
    """A 2-D network on every whole slice along model axis ``axis``, neighbours as channels."""
    model, card = load_checkpoint(model_path)
    image = nib.load(path)
    data = to_model(image.get_fdata(dtype=np.float32)[None], image.affine, canonical)[0]
    n = data.shape[axis]
    out = []
    for s in range(n):
        picks = np.clip(np.arange(s - context, s + context + 1), 0, n - 1)
        x = np.stack([np.take(data, p, axis=axis) for p in picks])[None]
        out.append(run_network(model, card.normalize_tiles(x.copy()))[0])
    return to_voxels(np.stack(out, axis=axis + 1), image.affine, canonical)


def stored(out):
    group = zarr.open_group(str(out), mode="r")
    return group["probabilities"][:].transpose(0, 3, 2, 1), group  # -> (class, i, j, k)


def exact_region(grid, radius):
    """Voxels (in scene order) whose ``radius`` neighbourhood every covering tile sees as the whole does.

    At the volume's own edges both zero-pad alike; a tile padded past the edge
    (mirrored) does not.
    """
    axes = []
    for n, tile, origins, r in zip(grid.shape, grid.tile, grid.origins, radius, strict=True):
        ok = np.ones(n, bool)
        for t0 in origins:
            x = np.arange(t0, min(t0 + tile, n))
            left = (x - r >= t0) | (t0 == 0)
            right = (x + r < min(t0 + tile, n)) | (t0 + tile == n)
            ok[x[~(left & right)]] = False
        axes.append(ok)
    return np.einsum("i,j,k->ijk", *axes).astype(bool)


@pytest.mark.parametrize("shape", [(23, 17, 9), (5, 4, 3), (1, 1, 1), (40, 3, 1)])
def test_pointwise_3d_model_tiled_equals_whole_volume(tmp_path, shape):
    path = organ_nifti(tmp_path / "ct.nii.gz", shape=shape)
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=8, overlap=2)
    options = SegmentOptions(block=8, chunk=4, probabilities="float32", cache_dir=str(tmp_path / "c"))
    segment(path, model, tmp_path / "o.zarr", options)
    got, group = stored(tmp_path / "o.zarr")
    expected = whole_volume(model, path)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert group["mask"].shape == shape[::-1]
    assert np.array_equal(group["mask"][:].T, expected.argmax(0))


@pytest.mark.parametrize(("affine", "canonical"), [(OBLIQUE, False), (OBLIQUE, True), (PERMUTED, True)])
def test_3d_model_tiled_equals_whole_where_the_receptive_field_allows(tmp_path, affine, canonical):
    path = organ_nifti(tmp_path / "ct.nii", shape=(37, 29, 23), affine=affine)
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=16, overlap=6, arch_kwargs={"kernel_size": 3, "layers": 2})
    options = SegmentOptions(block=16, chunk=8, probabilities="float32", canonical=canonical)
    segment(path, model, tmp_path / "o.zarr", options)
    got, group = stored(tmp_path / "o.zarr")
    expected = whole_volume(model, path, canonical=canonical)
    grid = TileGrid.create(group["mask"].shape, 16, 6)
    exact = exact_region(grid, (2, 2, 2)).T  # -> (i, j, k)
    assert 0.1 < exact.mean() < 0.9
    np.testing.assert_allclose(got[:, exact], expected[:, exact], atol=1e-5)
    assert np.abs(got - expected).max() > 1e-3  # elsewhere tiles do differ: the oracle has teeth


def conv2d_checkpoint(path, *, in_channels=1, kernel_size=3, **card):
    init_checkpoint(
        path,
        arch="conv",
        in_channels=in_channels,
        classes=["a", "b", "c"],
        tile=8,
        overlap=2,
        mean=[0.0] * in_channels,
        std=[300.0] * in_channels,
        seed=4,
        arch_kwargs={"kernel_size": kernel_size},
        **card,
    )
    return path


@pytest.mark.parametrize(("axis", "canonical"), [(0, False), (1, False), (2, False), (2, True)])
def test_slice_wise_2d_model_matches_whole_slices(tmp_path, axis, canonical):
    path = organ_nifti(tmp_path / "mri.nii.gz", shape=(19, 14, 11))
    model = conv2d_checkpoint(tmp_path / "m.pt")
    options = SegmentOptions(
        block=16,
        chunk=8,
        probabilities="float32",
        slice_axis=axis,
        canonical=canonical,
        cache_dir=str(tmp_path),
    )
    segment(path, model, tmp_path / "o.zarr", options)
    got, group = stored(tmp_path / "o.zarr")
    plan = group.attrs["gigaseg"]["plan"]
    view = group.attrs["gigaseg"]["model_input"]
    flat = view["axis_order"][axis]
    assert plan["tile"][flat] == 1 and plan["overlap"][flat] == 0
    expected = slice_by_slice(model, path, axis, canonical=canonical)
    grid = TileGrid.create(group["mask"].shape, plan["tile"], plan["overlap"])
    radius = tuple(0 if a == flat else 1 for a in range(3))
    exact = exact_region(grid, radius).T
    assert exact.mean() > 0.2
    np.testing.assert_allclose(got[:, exact], expected[:, exact], atol=1e-5)


@pytest.mark.parametrize("canonical", [False, True])
def test_context_slices_enter_as_channels_in_the_models_order(tmp_path, canonical):
    path = organ_nifti(tmp_path / "mri.nii", shape=(12, 10, 9), affine=PERMUTED)
    model = conv2d_checkpoint(tmp_path / "m.pt", in_channels=5, kernel_size=1)
    options = SegmentOptions(block=8, chunk=4, probabilities="float32", slice_axis=2, context=2, canonical=canonical)
    segment(path, model, tmp_path / "o.zarr", options)
    got, _ = stored(tmp_path / "o.zarr")
    expected = slice_by_slice(model, path, 2, canonical=canonical, context=2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_4d_volumes_as_channels(tmp_path, rng):
    data = rng.normal(0, 300, (9, 8, 7, 2)).astype(np.float32)
    path = write_nifti(tmp_path / "f.nii.gz", data)
    model = conv3d_checkpoint(tmp_path / "m.pt", in_channels=2, tile=8, overlap=2)
    options = SegmentOptions(probabilities="float32", volume="channels", cache_dir=str(tmp_path))
    segment(path, model, tmp_path / "o.zarr", options)
    got, _ = stored(tmp_path / "o.zarr")
    np.testing.assert_allclose(got, whole_volume(model, path, volume="all"), atol=1e-5)


def test_percentile_normalisation_is_fitted_on_the_volume(tmp_path):
    path = organ_nifti(tmp_path / "mri.nii", shape=(30, 28, 26))
    spec = {"mode": "percentile", "low": 1.0, "high": 99.0}
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=16, overlap=4, mean=None, std=None, intensity=spec)
    segment(path, model, tmp_path / "o.zarr", SegmentOptions(probabilities="float32"))
    got, group = stored(tmp_path / "o.zarr")
    fitted = group.attrs["gigaseg"]["model_input"]["intensity"]
    voxels = nib.load(path).get_fdata()
    lo, hi = np.percentile(voxels, [1.0, 99.0])
    assert fitted["low"][0] == pytest.approx(lo, abs=20) and fitted["high"][0] == pytest.approx(hi, abs=20)
    clipped = np.clip(voxels, fitted["low"][0], fitted["high"][0])
    assert fitted["mean"][0] == pytest.approx(clipped.mean(), rel=0.05, abs=5)
    normalize = Intensity(**{k: np.array(v) for k, v in fitted.items()})
    np.testing.assert_allclose(got, whole_volume(model, path, normalize=normalize), atol=1e-5)


def test_ct_window_from_the_card_needs_no_statistics(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii", shape=(12, 12, 12))
    spec = {"mode": "ct", "window": [-160, 240], "mean": 40.0, "std": 100.0}
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=8, overlap=2, intensity=spec)
    segment(path, model, tmp_path / "o.zarr", SegmentOptions(probabilities="float32"))
    got, group = stored(tmp_path / "o.zarr")
    assert group.attrs["gigaseg"]["model_input"]["intensity"] == {
        "mean": [40.0],
        "std": [100.0],
        "low": [-160.0],
        "high": [240.0],
    }
    normalize = Intensity(np.array([40.0]), np.array([100.0]), np.array([-160.0]), np.array([240.0]))
    np.testing.assert_allclose(got, whole_volume(model, path, normalize=normalize), atol=1e-5)


def test_tile_and_overlap_in_millimetres_follow_anisotropic_voxels(tmp_path):
    affine = oblique_affine(zooms=(0.8, 0.8, 2.5))
    path = organ_nifti(tmp_path / "ct.nii", shape=(40, 40, 16), affine=affine)
    model = conv3d_checkpoint(tmp_path / "m.pt")
    segment(path, model, tmp_path / "o.zarr", SegmentOptions(tile="16mm", overlap="4mm"))
    plan = zarr.open_group(str(tmp_path / "o.zarr")).attrs["gigaseg"]["plan"]
    assert plan["tile"] == [6, 20, 20]  # (z, y, x) = (k, j, i): 16 mm over 2.5, 0.8, 0.8 mm
    assert plan["overlap"] == [2, 5, 5]


def test_block_size_does_not_change_a_single_bit_in_3d(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii", shape=(30, 26, 21))
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=12, overlap=3, arch_kwargs={"kernel_size": 3})
    runs = []
    for i, (block, chunk) in enumerate([(8, 4), (16, 8), (None, None)]):
        options = SegmentOptions(block=block, chunk=chunk, probabilities="float32", batch_size=3)
        segment(path, model, tmp_path / f"o{i}.zarr", options)
        runs.append(zarr.open_group(str(tmp_path / f"o{i}.zarr"), mode="r"))
    for other in runs[1:]:
        assert np.array_equal(runs[0]["mask"][:], other["mask"][:])
        assert np.array_equal(runs[0]["probabilities"][:], other["probabilities"][:])


def test_segment_then_export_overlays_the_input(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii.gz", shape=(21, 18, 15), sform_code=2, qform_code=1)
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=8, overlap=2)
    segment(path, model, tmp_path / "o.zarr", SegmentOptions(canonical=True, cache_dir=str(tmp_path)))
    export_mask(tmp_path / "o.zarr", tmp_path / "mask.nii.gz")
    mask, image = nib.load(tmp_path / "mask.nii.gz"), nib.load(path)
    assert np.array_equal(mask.affine, image.affine) and mask.shape == image.shape
    labels = zarr.open_group(str(tmp_path / "o.zarr"))["mask"][:]
    assert np.array_equal(np.asanyarray(mask.dataobj), labels.T)
    assert np.array_equal(labels.T, whole_volume(model, path, canonical=True).argmax(0))
    assert_itk_overlays(path, tmp_path / "mask.nii.gz", labels)


def test_bad_volume_input_gives_clear_errors(tmp_path, make_tiff):
    path = organ_nifti(tmp_path / "ct.nii", shape=(8, 8, 8))
    four = write_nifti(tmp_path / "f.nii", np.zeros((4, 4, 4, 2), np.float32))
    tif = make_tiff((1, 16, 16))
    model3d = conv3d_checkpoint(tmp_path / "m3.pt", tile=8, overlap=2)
    model2d = conv2d_checkpoint(tmp_path / "m2.pt")
    two_channels = conv3d_checkpoint(tmp_path / "c2.pt", in_channels=2, tile=8, overlap=2)
    cases = [
        (
            path,
            model2d,
            {},
            "is a 3-D volume but the model \\(conv\\) is 2-D; run it slice by slice with slice_axis",
        ),
        (path, two_channels, {}, r"takes 2 channels but .* gives 1 \(1 per slice x 1 slice\(s\)\)"),
        (path, model2d, {"slice_axis": 2, "context": 1}, r"takes 1 channels but .* gives 3"),
        (path, model3d, {"slice_axis": 1}, "but the model \\(conv3d\\) is 3-D"),
        (path, model2d, {"slice_axis": 3}, "slice_axis must be 0, 1 or 2"),
        (four, model3d, {}, "holds 2 volumes .*: choose one with volume"),
        (tif, model3d, {}, "the model \\(conv3d\\) is 3-D but .* is a 2-D raster"),
        (tif, model2d, {"canonical": True}, "are for 3-D volumes"),
        (path, model3d, {"tile": "8cm"}, "millimetres"),
    ]
    for source, model, options, message in cases:
        with pytest.raises(InputError, match=message):
            segment(source, model, tmp_path / "o.zarr", SegmentOptions(**options))
    assert not (tmp_path / "o.zarr").exists()

"""End to end: GeoTIFF on disk -> streamed blocks -> Zarr, against whole-image oracles."""

import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasterio.crs import CRS

from gigaseg.errors import InputError
from gigaseg.jobs.segment import SegmentOptions, segment
from gigaseg.models import load_checkpoint
from tests.conftest import UTM_TRANSFORM, write_tiff


def whole_image_scores(model_path, image, *, softmax=True):
    """The oracle: the network run once over the whole image, no tiles."""
    model, card = load_checkpoint(model_path)
    x = card.normalize(image[None].astype(np.float32).copy())
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
        out = torch.softmax(out, 1) if softmax else out
    return out[0].numpy()


def read_store(path):
    return zarr.open_group(str(path), mode="r")


@pytest.mark.parametrize("merge", ["probs", "logits"])
def test_tiled_pointwise_model_equals_whole_image_inference(tmp_path, make_tiff, pointwise_model, merge):
    tif = make_tiff((3, 300, 410))
    options = SegmentOptions(block=128, chunk=64, probabilities="float32", merge=merge)
    segment(tif, pointwise_model, tmp_path / "out.zarr", options)
    with rasterio.open(tif) as ds:
        image = ds.read()
    expected = whole_image_scores(pointwise_model, image)
    out = read_store(tmp_path / "out.zarr")
    np.testing.assert_allclose(out["probabilities"][:], expected, atol=1e-5)
    assert np.array_equal(out["mask"][:], expected.argmax(0))


def test_logit_blending_reproduces_whole_image_logits(tmp_path, make_tiff, pointwise_model):
    """Within 1e-4 in the logits: log of the stored softmax equals the logits up to a shift."""
    tif = make_tiff((3, 130, 170))
    segment(
        tif,
        pointwise_model,
        tmp_path / "o.zarr",
        SegmentOptions(merge="logits", probabilities="float32", block=64, chunk=32),
    )
    with rasterio.open(tif) as ds:
        logits = whole_image_scores(pointwise_model, ds.read(), softmax=False)
    got = np.log(read_store(tmp_path / "o.zarr")["probabilities"][:].astype(np.float64))
    np.testing.assert_allclose(got - got[0], logits - logits[0], atol=1e-4)


def test_block_size_does_not_change_a_single_bit(tmp_path, make_tiff, unet_model):
    """Same tiling, different blocks and chunks: identical masks and probabilities.

    Batches hold one tile row of a block, so they differ with the block width; on the
    CPU the network's output per tile does not depend on the batch, hence bit equality.
    """
    tif = make_tiff((3, 230, 300))
    runs = []
    for i, (block, chunk) in enumerate([(64, 32), (96, 32), (4096, 64)]):
        out = tmp_path / f"o{i}.zarr"
        segment(
            tif,
            unet_model,
            out,
            SegmentOptions(block=block, chunk=chunk, probabilities="float32", batch_size=3),
        )
        runs.append(read_store(out))
    for other in runs[1:]:
        assert np.array_equal(runs[0]["mask"][:], other["mask"][:])
        assert np.array_equal(runs[0]["probabilities"][:], other["probabilities"][:])


def test_streamed_blocks_match_a_whole_scene_stitch(tmp_path, make_tiff, unet_model):
    """Oracle: every global tile run separately and blended in one scene-sized array."""
    from gigaseg.tiler import TileGrid, blend_window

    tif = make_tiff((3, 150, 170))
    segment(tif, unet_model, tmp_path / "o.zarr", SegmentOptions(block=64, chunk=32, probabilities="float32"))
    with rasterio.open(tif) as ds:
        image = ds.read().astype(np.float32)
    model, card = load_checkpoint(unet_model)
    grid = TileGrid.create(image.shape[1:], card.tile, card.overlap)
    window = blend_window("gaussian", grid.tile)
    acc = np.zeros((3, *image.shape[1:]), np.float64)
    weight = np.zeros(image.shape[1:], np.float64)
    for r in range(grid.counts[0]):
        for c in range(grid.counts[1]):
            box = grid.tile_box((r, c))
            x = card.normalize(image[(slice(None), *box.slices())][None].copy())
            with torch.inference_mode():
                p = torch.softmax(model(torch.from_numpy(x)), 1)[0].numpy()
            acc[(slice(None), *box.slices())] += p * window
            weight[box.slices()] += window
    expected = acc / weight
    got = read_store(tmp_path / "o.zarr")["probabilities"][:]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 53), (65, 130), (200, 63)])
def test_odd_shapes_match_whole_image_inference(tmp_path, rng, pointwise_model, shape):
    tif = write_tiff(tmp_path / "odd.tif", rng.integers(0, 200, (3, *shape)).astype(np.uint8))
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(block=64, chunk=32))
    with rasterio.open(tif) as ds:
        expected = whole_image_scores(pointwise_model, ds.read()).argmax(0)
    mask = read_store(tmp_path / "o.zarr")["mask"][:]
    assert mask.shape == shape
    assert np.array_equal(mask, expected)


def test_nodata_pixels_get_the_nodata_label(tmp_path, rng, unet_model):
    data = rng.integers(1, 200, (3, 120, 140)).astype(np.uint8)
    data[:, :10, :] = 0
    data[:, 50:60, 70:90] = 0
    tif = write_tiff(tmp_path / "nd.tif", data, nodata=0)
    summary = segment(tif, unet_model, tmp_path / "o.zarr", SegmentOptions(block=64, chunk=32))
    mask = read_store(tmp_path / "o.zarr")["mask"][:]
    nodata = (data == 0).any(axis=0)
    assert (mask[nodata] == 255).all()
    assert (mask[~nodata] < 3).all()
    assert summary.nodata_pixels == nodata.sum()


@pytest.mark.parametrize("height", [120, 50])  # 50: below the tile, so tiles are mirror-padded
def test_nodata_pixels_enter_the_network_as_the_band_mean(tmp_path, rng, unet_model, height):
    """uint8 strips are normalised batch by batch; nodata must still reach the model as 0 (the mean)."""
    data = rng.integers(1, 200, (3, height, 150)).astype(np.uint8)
    holes = np.zeros(data.shape[1:], bool)
    holes[20:30, 40:70] = True
    data[:, holes] = 0
    reference = data.copy()
    reference[:, holes] = 100  # the card's mean: 0 after normalisation
    options = SegmentOptions(block=64, chunk=32, probabilities="float32")
    segment(write_tiff(tmp_path / "nd.tif", data, nodata=0), unet_model, tmp_path / "a.zarr", options)
    segment(write_tiff(tmp_path / "ref.tif", reference), unet_model, tmp_path / "b.zarr", options)
    got, expected = read_store(tmp_path / "a.zarr"), read_store(tmp_path / "b.zarr")
    assert np.array_equal(got["probabilities"][:][:, ~holes], expected["probabilities"][:][:, ~holes])
    assert np.array_equal(got["mask"][:][~holes], expected["mask"][:][~holes])
    assert (got["mask"][:][holes] == 255).all()


def test_georeferencing_round_trips_through_zarr_and_cog(tmp_path, make_tiff, pointwise_model):
    from gigaseg.io.export import export_mask

    tif = make_tiff((3, 100, 120))
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(chunk=64))
    export_mask(tmp_path / "o.zarr", tmp_path / "o.tif")
    for path in (f'ZARR:"{tmp_path / "o.zarr"}":/mask', tmp_path / "o.tif"):
        with rasterio.open(path) as ds:
            assert ds.crs == CRS.from_epsg(32633)
            assert ds.transform == UTM_TRANSFORM
            assert ds.shape == (100, 120)
            assert ds.nodata == 255
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.driver == "GTiff"
        assert ds.colormap(1)[255] == (0, 0, 0, 0)
        assert np.array_equal(ds.read(1), read_store(tmp_path / "o.zarr")["mask"][:])


def test_tiles_in_crs_units(tmp_path, make_tiff, pointwise_model):
    tif = make_tiff((3, 100, 120))
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(tile="640m", overlap="160m"))
    plan = read_store(tmp_path / "o.zarr").attrs["gigaseg"]["plan"]
    assert plan["tile"] == [64, 64]
    assert plan["overlap"] == [16, 16]


def test_wrong_band_count_is_refused(tmp_path, make_tiff, pointwise_model):
    tif = make_tiff((4, 50, 50))
    with pytest.raises(InputError, match="takes 3 bands but 4 are selected"):
        segment(tif, pointwise_model, tmp_path / "o.zarr")
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(bands=(1, 2, 3)))


def test_resume_skips_done_blocks_and_gives_the_same_bits(tmp_path, make_tiff, unet_model):
    tif = make_tiff((3, 200, 200))
    options = SegmentOptions(block=64, chunk=32, probabilities="float16")
    segment(tif, unet_model, tmp_path / "clean.zarr", options)
    segment(tif, unet_model, tmp_path / "r.zarr", options)
    store = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
    store["blocks_done"][1:, :] = 0  # as if killed after the first row of blocks
    store["mask"][64:, :] = 0
    attrs = dict(store.attrs["gigaseg"])
    store.attrs["gigaseg"] = {**attrs, "complete": False}
    summary = segment(
        tif,
        unet_model,
        tmp_path / "r.zarr",
        SegmentOptions(block=64, chunk=32, probabilities="float16", resume=True),
    )
    assert summary.blocks_skipped == 4
    clean, resumed = read_store(tmp_path / "clean.zarr"), read_store(tmp_path / "r.zarr")
    assert np.array_equal(clean["mask"][:], resumed["mask"][:])
    assert resumed.attrs["gigaseg"]["complete"] is True


def test_deterministic_option_gives_the_same_bits_as_a_default_run(tmp_path, make_tiff, unet_model):
    """On the CPU kernels are deterministic either way; the flag must not change results."""
    tif = make_tiff((3, 100, 90))
    for name, flag in (("a.zarr", False), ("b.zarr", True)):
        segment(tif, unet_model, tmp_path / name, SegmentOptions(probabilities="float32", deterministic=flag))
    a, b = read_store(tmp_path / "a.zarr"), read_store(tmp_path / "b.zarr")
    assert np.array_equal(a["probabilities"][:], b["probabilities"][:])


@pytest.mark.parametrize(("classes", "nodata"), [(3, 255), (40, 255), (300, 65535)])
def test_label_counts_agree_with_bincount(classes, nodata):
    from gigaseg.jobs.segment import label_counts

    rng = np.random.default_rng(3)
    dtype = np.uint8 if nodata == 255 else np.uint16
    labels = rng.integers(0, classes, (70, 33)).astype(dtype)
    labels[rng.random(labels.shape) < 0.1] = nodata
    found = np.bincount(labels.ravel(), minlength=nodata + 1)
    expected = [*found[:classes], found[nodata]]
    assert label_counts(labels, classes, nodata).tolist() == expected
    assert label_counts(labels[:0], classes, nodata).sum() == 0

"""End to end: GeoTIFF on disk -> streamed blocks -> Zarr, against whole-image oracles."""

import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasterio.crs import CRS

from gigaseg import SegmentOptions, segment
from gigaseg.errors import InputError
from gigaseg.models import load_checkpoint
from tests.conftest import UTM_TRANSFORM, needs_cuda, write_tiff


def whole_image_scores(model_path, image, *, softmax=True):
    """The oracle: the network run once over the whole image, no tiles."""
    model, card = load_checkpoint(model_path)
    x = card.normalize_tiles(image[None].astype(np.float32).copy())
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
            x = card.normalize_tiles(image[(slice(None), *box.slices())][None].copy())
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
    with pytest.raises(InputError, match="takes 3 channels but 4 are selected"):
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


@pytest.fixture
def determinism_off():
    """Every switch ``--deterministic`` turns, off; put back as it was after the test.

    The switches are process-wide; gigaseg turns them on around each forward pass of a
    deterministic run and back after it (cuBLAS's workspace setting stays: cuBLAS reads it
    once). Calling the fixture's value turns them off again between runs.
    """
    import os

    from gigaseg.models.inference import kernel_switches, set_kernel_switches

    saved, workspace = kernel_switches(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")

    def off():
        set_kernel_switches((False, False, False, False))
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    off()
    yield off
    set_kernel_switches(saved)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if workspace is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def spy_on_forwards(monkeypatch):
    """Record, as the network of every predictor starts each forward pass, the predictor's
    flag and torch's switches."""
    import os

    from gigaseg.models.inference import Predictor, kernel_switches

    seen = []
    forward = Predictor._scores

    def spy(self, x, **kw):
        def record(module, inputs):
            algorithms, warn_only, deterministic, benchmark = kernel_switches()
            workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
            seen.append((self.deterministic, algorithms, warn_only, deterministic, benchmark, workspace))

        hook = self.model.register_forward_pre_hook(record)
        try:
            return forward(self, x, **kw)
        finally:
            hook.remove()

    monkeypatch.setattr(Predictor, "_scores", spy)
    return seen


DETERMINISTIC = (True, True, True, True, False, True)  # flag, algorithms, warn only, cuDNN, no autotuner, cuBLAS
DETERMINISTIC_CPU = (*DETERMINISTIC[:-1], False)  # no CUDA, no cuBLAS setting in the environment
DEFAULT = (False, False, False, False, False, False)


def test_deterministic_option_holds_during_the_run_and_is_fingerprinted(
    tmp_path, make_tiff, unet_model, monkeypatch, determinism_off
):
    """On the CPU the flag cannot change a bit, so what is checked is what it does: while
    the network runs, torch uses deterministic algorithms (warning, not failing, where an op
    has none), cuDNN deterministic kernels without its autotuner (cuBLAS's fixed workspace,
    a setting in the environment, only for CUDA); without the flag none of that is forced.
    The store's fingerprint records the flag, so a resume with the other setting is refused.
    Bit-identical GPU runs: the CUDA test below."""
    seen = spy_on_forwards(monkeypatch)
    tif = make_tiff((3, 100, 90))
    for name, flag in (("default.zarr", False), ("deterministic.zarr", True)):
        determinism_off()
        seen.clear()
        options = SegmentOptions(probabilities="float32", deterministic=flag, device="cpu")
        segment(tif, unet_model, tmp_path / name, options)
        assert seen and set(seen) == {DETERMINISTIC_CPU if flag else DEFAULT}
        assert "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ
        # and after the run, as before it: a later run without the flag is not made deterministic
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
        assert read_store(tmp_path / name).attrs["gigaseg"]["fingerprint"]["options"]["deterministic"] is flag
    a, b = read_store(tmp_path / "default.zarr"), read_store(tmp_path / "deterministic.zarr")
    assert np.array_equal(a["probabilities"][:], b["probabilities"][:])  # the CPU's kernels are deterministic anyway
    again = SegmentOptions(probabilities="float32", deterministic=True, resume=True)
    with pytest.raises(InputError, match="deterministic: false -> true"):
        segment(tif, unet_model, tmp_path / "default.zarr", again)


def test_a_scene_of_few_tiles_runs_one_batch_of_that_many(tmp_path, make_tiff, pointwise_model):
    from gigaseg.jobs.scene import SceneSpec, open_runner

    tif = make_tiff((3, 100, 120))  # 2 x 3 tiles of 64 with overlap 16
    spec = SceneSpec(str(tif), str(pointwise_model), str(tmp_path / "o.zarr"), SegmentOptions(batch_size=64))
    runner = open_runner(spec, create=True)
    assert runner.plan.grid.size == 6 and runner.batch_size == 6


def test_several_reader_threads_give_the_same_bits(tmp_path, make_tiff, unet_model):
    tif = make_tiff((3, 260, 150))
    for name, readers in (("one.zarr", 1), ("four.zarr", 4)):
        segment(
            tif,
            unet_model,
            tmp_path / name,
            SegmentOptions(block=128, chunk=32, readers=readers, probabilities="float32"),
        )
    one, four = read_store(tmp_path / "one.zarr"), read_store(tmp_path / "four.zarr")
    assert np.array_equal(one["probabilities"][:], four["probabilities"][:])
    assert np.array_equal(one["mask"][:], four["mask"][:])


def test_many_classes_narrow_the_blocks_to_the_band_budget(tmp_path):
    from gigaseg.jobs.plan import make_plan
    from gigaseg.models import ModelCard
    from gigaseg.tiler.stitch import band_bytes

    card = ModelCard(
        arch="conv", in_channels=1, classes=[f"c{i}" for i in range(104)], spatial_dims=3, tile=96, overlap=16
    )
    plan = make_plan((400, 512, 512), card, SegmentOptions(), pixel_size=1.0, stride=1)
    band = band_bytes(96 + plan.blocks.chunk[0], plan.blocks.block[1] * plan.blocks.block[2], 104)
    assert band <= 4 * 2**30 and plan.blocks.block[1:] == (192, 192)
    few = ModelCard(arch="conv", in_channels=1, classes=["a", "b", "c", "d"], spatial_dims=3, tile=96, overlap=16)
    assert make_plan((400, 512, 512), few, SegmentOptions(), pixel_size=1.0, stride=1).blocks.block[1:] == (512, 512)
    tight = make_plan((400, 512, 512), card, SegmentOptions(band_memory="1GiB"), pixel_size=1.0, stride=1)
    assert tight.blocks.block[1:] == (64, 64)


@needs_cuda
def test_on_a_gpu_the_bundled_model_gives_the_cpus_mask_but_at_near_ties(tmp_path):
    """bfloat16 autocast on the GPU: probabilities within autocast tolerance, labels equal
    where the classes do not nearly tie; nodata and georeferencing the same."""
    from gigaseg.io.generate import write_landcover_tiff
    from gigaseg.jobs.demo import BUNDLED_2D, bundled_model

    scene = write_landcover_tiff(tmp_path / "s.tif", (700, 900), seed=77, border=5)
    for device in ("cpu", "cuda"):
        options = SegmentOptions(block=512, chunk=128, probabilities="float32", device=device)
        segment(scene, bundled_model(BUNDLED_2D), tmp_path / f"{device}.zarr", options)
    cpu, gpu = read_store(tmp_path / "cpu.zarr"), read_store(tmp_path / "cuda.zarr")
    p_cpu, p_gpu = cpu["probabilities"][:], gpu["probabilities"][:]
    np.testing.assert_allclose(p_gpu, p_cpu, atol=0.05)
    top2 = np.sort(p_cpu, axis=0)[-2:]
    clear = top2[1] - top2[0] > 0.1
    assert np.array_equal(gpu["mask"][:][clear], cpu["mask"][:][clear])
    assert (gpu["mask"][:] == cpu["mask"][:]).mean() > 0.99
    assert np.array_equal(gpu["mask"][:] == 255, cpu["mask"][:] == 255)
    assert gpu["mask"].attrs["_CRS"] == cpu["mask"].attrs["_CRS"]


@needs_cuda
def test_on_a_gpu_deterministic_runs_give_identical_masks(
    tmp_path, make_tiff, unet_model, monkeypatch, determinism_off
):
    seen = spy_on_forwards(monkeypatch)
    tif = make_tiff((3, 300, 410))
    for name in ("a.zarr", "b.zarr"):
        options = SegmentOptions(probabilities="float16", device="cuda", deterministic=True, batch_size=4)
        segment(tif, unet_model, tmp_path / name, options)
    assert seen and set(seen) == {DETERMINISTIC}
    a, b = read_store(tmp_path / "a.zarr"), read_store(tmp_path / "b.zarr")
    assert np.array_equal(a["mask"][:], b["mask"][:])
    assert np.array_equal(a["probabilities"][:], b["probabilities"][:])


@pytest.mark.parametrize("classes", [254, 255, 256, 257])
def test_class_counts_around_the_uint8_limit_get_the_stores_label_type(tmp_path, rng, classes):
    """255 and 256 classes: argmax fits uint8 but the store's nodata (65535) needs uint16."""
    from gigaseg.models.checkpoint import init_checkpoint

    model = tmp_path / "m.pt"
    names = [f"c{i}" for i in range(classes)]
    init_checkpoint(model, arch="conv", in_channels=3, classes=names, tile=32, overlap=8, seed=1)
    data = rng.integers(1, 200, (3, 40, 50)).astype(np.uint8)
    data[:, :3] = 0
    tif = write_tiff(tmp_path / "s.tif", data, nodata=0)
    segment(tif, model, tmp_path / "o.zarr", SegmentOptions(probabilities="uint8"))
    mask = read_store(tmp_path / "o.zarr")["mask"][:]
    nodata = 255 if classes < 255 else 65535
    assert mask.dtype == (np.uint8 if classes < 255 else np.uint16)
    assert (mask[:3] == nodata).all() and (mask[3:] < classes).all()


@pytest.mark.parametrize(("classes", "nodata"), [(3, 255), (40, 255), (300, 65535)])
def test_label_counts_agree_with_bincount(classes, nodata):
    from gigaseg.jobs.engine import label_counts

    rng = np.random.default_rng(3)
    dtype = np.uint8 if nodata == 255 else np.uint16
    labels = rng.integers(0, classes, (70, 33)).astype(dtype)
    labels[rng.random(labels.shape) < 0.1] = nodata
    found = np.bincount(labels.ravel(), minlength=nodata + 1)
    expected = [*found[:classes], found[nodata]]
    assert label_counts(labels, classes, nodata).tolist() == expected
    assert label_counts(labels[:0], classes, nodata).sum() == 0


def test_a_batch_copies_evenly_spaced_tiles_of_a_strip_as_tile_by_tile_copies_would():
    """The device path's strided copy of a row's tiles against one copy per tile (and a padded
    tile of a scene smaller than a tile on its own)."""
    from gigaseg.models.intensity import Intensity
    from gigaseg.tiler import TileGrid
    from gigaseg.tiler.tiles import Strip, Tile, TileBatch

    grid = TileGrid.create((24, 90), 16, 4)
    pixels = np.random.default_rng(9).integers(0, 255, (24, 90, 3), dtype=np.uint8)
    strip = Strip.stage(
        grid.tile_box((0, 0)).union(grid.tile_box((0, 7))),
        np.moveaxis(pixels[:16], -1, 0),
        np.ones((16, 90), bool),
        torch.device("cpu"),
    )
    tiles = [Tile(0, grid.tile_box((0, c)), strip, ends_row=c == 7) for c in range(8)]
    norm = Intensity(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0]))
    batches = [
        TileBatch(10, 3, grid.tile, channels_last=True, device=torch.device("cpu"), stride=s)
        for s in (grid.stride, None)
    ]
    strided, plain = (b.fill(tiles, norm) for b in batches)
    assert np.array_equal(strided.numpy(), plain.numpy())
    assert strided.is_contiguous(memory_format=torch.channels_last) and (strided[8:] == 0).all()

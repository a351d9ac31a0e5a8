"""The refinement stage over real stores: block by block in a process pool, resume, CLI."""

import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from gigaseg.errors import IncompleteStoreError, InputError
from gigaseg.io.georef import Georef
from gigaseg.io.store import StoreLayout, create_store, open_store
from gigaseg.jobs.cli import cli
from gigaseg.jobs.refine import refine, start_refine
from gigaseg.refine import RefineOptions, dense_crf
from gigaseg.refine.features import Stretch
from gigaseg.refine.metrics import mean_iou
from gigaseg.refine.synthetic import blurred_probabilities, shapes_image, shapes_labels
from gigaseg.tiler import Box
from tests.conftest import write_tiff
from tests.test_cli import assert_one_line_error

K = 3
SHAPE = (160, 200)
CRF = {"sxy": 12.0, "srgb": 10.0, "iterations": 5}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def scene(tmp_path):
    """A GeoTIFF of sharp shapes with a nodata strip, and a finished store of blurred probabilities."""
    truth = shapes_labels(SHAPE, classes=K, seed=3)
    image = shapes_image(truth, classes=K, seed=3)
    image[:, :, :12] = 0
    tif = write_tiff(tmp_path / "scene.tif", image, nodata=0)
    probs = blurred_probabilities(truth, classes=K, seed=3)
    valid = np.ones(SHAPE, bool)
    valid[:, :12] = False
    probs[:, ~valid] = 0
    labels = probs.argmax(0).astype(np.uint8)
    labels[~valid] = 255
    layout = StoreLayout(
        shape=SHAPE,
        chunks=(32, 32),
        block_counts=(1, 1),
        classes=["a", "b", "c"],
        georef=Georef(None),
        probabilities="uint8",
        attrs={"bands": [1, 2, 3]},
    )
    store = create_store(tmp_path / "m.zarr", layout)
    store.write(Box((0, 0), SHAPE), labels, probs)
    store.mark_done((0, 0))
    store.finish()
    return tmp_path / "m.zarr", tif, truth, valid


def whole_image_inputs(store_path, tif):
    """The oracle's inputs: stored probabilities, features stretched as the store records."""
    import rasterio

    store = open_store(store_path)
    record = store.attrs["refine"]
    probs = store.probabilities[...].astype(np.float32) / 255
    with rasterio.open(tif) as ds:
        image = ds.read(record["feature_bands"]).astype(np.float32)
    limits = record["stretch"]
    return probs, Stretch(tuple(limits["percentiles"]), limits["low"], limits["high"])(image)


@pytest.mark.slow
def test_blockwise_refinement_of_a_store_equals_one_whole_image_crf(scene):
    store_path, tif, truth, valid = scene
    store, counts, _ = refine(store_path, tif, RefineOptions(params=CRF, block=64, workers=2))
    assert store.complete and open_store(store_path).complete
    record = open_store(store_path).attrs["refine"]
    assert record["method"] == "crf" and record["params"]["sxy"] == 12.0
    assert record["halo"] == [36, 36] and record["block"] == [64, 64] and record["complete"]
    assert record["feature_bands"] == [1, 2, 3] and record["stretch"]["percentiles"] == [2.0, 98.0]
    assert (zarr.open_group(str(store_path))["refine_done"][...] == 1).all()
    assert int(counts[-1]) == int((~valid).sum()) and int(counts.sum()) == truth.size

    probs, features = whole_image_inputs(store_path, tif)
    whole = dense_crf(probs, features, valid, params=store_params(CRF)).argmax(0)
    mask = open_store(store_path).mask[...]
    assert (mask[~valid] == 255).all()  # nodata keeps the nodata label
    assert (mask[valid] == whole[valid]).mean() >= 0.9999
    raw = probs.argmax(0)
    assert mean_iou(mask, truth, classes=K, valid=valid) > mean_iou(raw, truth, classes=K, valid=valid) + 0.02


def store_params(overrides):
    from gigaseg.refine import crf_params

    return crf_params(2, **overrides)


@pytest.mark.slow
def test_resume_refines_only_the_blocks_not_done(scene):
    store_path, tif, *_ = scene
    refine(store_path, tif, RefineOptions(params=CRF, block=64, workers=1))
    group = zarr.open_group(str(store_path), mode="r+", use_consolidated=False)
    expected = group["mask"][...]
    group["refine_done"][1, 2] = 0
    writer = open_store(store_path, mode="r+")  # writes go through the checksums, as a run's do
    writer.write(Box((64, 128), (128, 192)), np.zeros((64, 64), np.uint8))
    expected[0:32, 0:32] = 3  # in a block done: left alone
    writer.write(Box((0, 0), (32, 32)), expected[0:32, 0:32])
    _, counts, _ = refine(store_path, tif, RefineOptions(params=CRF, block=64, workers=1, resume=True))
    np.testing.assert_array_equal(open_store(store_path).mask[...], expected)
    # the summary counts the whole store, blocks of the first run included
    assert int(counts.sum()) == expected.size


@pytest.mark.slow
def test_resume_forgets_blocks_next_to_unfinished_segment_blocks(scene):
    store_path, tif, *_ = scene
    refine(store_path, tif, RefineOptions(params=CRF, block=64, workers=1))
    store = open_store(store_path, mode="r+")
    store.set_attrs(plan={"shape": list(SHAPE), "block": [96, 96], "chunk": [32, 32]})
    store.blocks_done.resize((2, 3))
    store.blocks_done[...] = 1
    store.blocks_done[1, 2] = 0  # rows 96-160, columns 192-200 will be segmented again
    stage = start_refine(store, tif, RefineOptions(params=CRF, block=64, workers=1, resume=True), bands=[1, 2, 3])
    stage.abort()
    done = zarr.open_group(str(store_path), use_consolidated=False)["refine_done"][...]
    # refine blocks are 64 wide (columns 0, 64, 128, 192); with the 36-pixel halo every
    # row's windows of columns 128 and 192 reach the segment block at rows 96+, columns 192+
    assert not done[:, 2:].any() and done[:, :2].all()
    assert not open_store(store_path).complete


def test_refining_needs_probabilities_and_a_finished_segmentation(tmp_path, scene):
    store_path, tif, *_ = scene
    layout = StoreLayout(shape=SHAPE, chunks=(32, 32), block_counts=(1, 1), classes=["a"], georef=Georef(None))
    create_store(tmp_path / "bare.zarr", layout)
    with pytest.raises(InputError, match="keeps no class scores for refinement"):
        refine(tmp_path / "bare.zarr", tif)
    layout = StoreLayout(
        shape=SHAPE,
        chunks=(32, 32),
        block_counts=(1, 2),
        classes=["a"],
        georef=Georef(None),
        probabilities="uint8",
    )
    create_store(tmp_path / "half.zarr", layout).mark_done((0, 0))
    with pytest.raises(IncompleteStoreError, match="1 of 2 blocks"):
        refine(tmp_path / "half.zarr", tif)
    small = write_tiff(tmp_path / "small.tif", np.ones((3, 20, 20), np.uint8))
    with pytest.raises(InputError, match="shape"):
        refine(store_path, small)


@pytest.mark.slow
def test_cli_refine_with_superpixels_and_errors(scene, tmp_path):
    store_path, tif, truth, valid = scene
    raw = open_store(store_path).mask[...]
    result = run("refine", store_path, "--image", tif, "--method", "superpixel", "--superpixel-size", 12)
    assert result.exit_code == 0, result.output
    assert "refined 32000 px with superpixel" in result.stdout
    record = json.loads(run("info", store_path, "--json").stdout)["provenance"]["refine"]
    assert record["method"] == "superpixel" and record["params"]["size"] == 12.0
    mask = open_store(store_path).mask[...]
    assert (mask[~valid] == 255).all()
    assert mean_iou(mask, truth, classes=K, valid=valid) > mean_iou(raw, truth, classes=K, valid=valid)
    assert_one_line_error(run("refine", store_path, "--image", tmp_path / "nope.tif"), "does not exist")
    bad = run("refine", store_path, "--image", tif, "--stretch", "2,x")  # click's usage error
    assert bad.exit_code == 2 and "--stretch must be two comma-separated numbers" in bad.stderr
    assert_one_line_error(run("refine", store_path, "--image", tif, "--crf-srgb", "0"), "positive")


@pytest.mark.slow
def test_segment_with_refine_end_to_end(tmp_path, pointwise_model):
    truth = shapes_labels((150, 170), classes=K, seed=5)
    tif = write_tiff(tmp_path / "s.tif", shapes_image(truth, classes=K, seed=5))
    out = tmp_path / "o.zarr"
    args = ["segment", tif, "--model", pointwise_model, "--out", out, "--block", 64, "--chunk", 32]
    refine_args = ["--refine", "crf", "--crf-sxy", 12, "--crf-iterations", 5, "--refine-block", 64]
    result = run(*args, *refine_args, "--refine-workers", 1)
    assert result.exit_code == 0, result.output
    store = open_store(out)
    assert store.complete and store.attrs["refine"]["complete"]
    assert store.probabilities is not None and store.probabilities.dtype == np.uint8  # kept
    probs, features = whole_image_inputs(out, tif)
    valid = np.ones(truth.shape, bool)
    whole = dense_crf(probs, features, valid, params=store_params({"sxy": 12.0, "iterations": 5})).argmax(0)
    assert (store.mask[...] == whole).mean() >= 0.9999
    assert not (store.mask[...] == probs.argmax(0)).all()  # the refinement did something

    # a store begun with --refine resumes only with --refine
    zarr.open_group(str(out), mode="r+", use_consolidated=False)["blocks_done"][0, 0] = 0
    open_store(out, mode="r+").reopen(refine={**store.attrs["refine"], "complete": False})
    assert_one_line_error(run(*args, "--resume"), "resume it with the same --refine")
    assert_one_line_error(run(*args, *refine_args[:2], "--resume"), "cannot resume refinement")
    result = run(*args, *refine_args, "--resume")
    assert result.exit_code == 0, result.output
    assert open_store(out).complete
    assert (open_store(out).mask[...] == whole).mean() >= 0.9999


def test_torch_crf_runs_block_by_block_in_a_thread(scene):
    from gigaseg.refine.torch_crf import torch_crf, torch_crf_params

    store_path, tif, truth, valid = scene
    overrides = {**CRF, "window": 12}
    refine(store_path, tif, RefineOptions(method="crf-torch", params=overrides, block=64))
    record = open_store(store_path).attrs["refine"]
    assert record["method"] == "crf-torch" and record["params"]["window"] == 12
    probs, features = whole_image_inputs(store_path, tif)
    whole = torch_crf(probs, features, valid, params=torch_crf_params(2, **overrides)).argmax(0)
    mask = open_store(store_path).mask[...]
    assert (mask[valid] == whole[valid]).mean() >= 0.999
    assert (mask[~valid] == 255).all()

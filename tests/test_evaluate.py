"""``gigaseg evaluate``: a mask store against a raster or vector reference, through the CLI runner."""

import json

import numpy as np
import pyogrio.raw
import pytest
import shapely
from click.testing import CliRunner
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points

from gigaseg.errors import IncompleteStoreError
from gigaseg.io.store import open_store
from gigaseg.jobs.cli import cli
from gigaseg.jobs.evaluate import evaluate_store
from gigaseg.models.checkpoint import init_checkpoint
from tests.conftest import UTM, UTM_TRANSFORM, write_tiff

CLASSES = ["a", "b", "c"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, message):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaseg: error:") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A finished 100 x 130 mask of 3 classes in 32-pixel chunks, nodata in its top-left corner."""
    d = tmp_path_factory.mktemp("evaluate")
    data = np.random.default_rng(0).integers(1, 200, (3, 100, 130)).astype(np.uint8)
    data[:, :10, :20] = 0
    write_tiff(d / "scene.tif", data, nodata=0)
    init_checkpoint(
        d / "m.pt", arch="conv", in_channels=3, classes=CLASSES, tile=32, overlap=8, mean=[100.0] * 3, std=[50.0] * 3
    )
    store = d / "mask.zarr"
    result = run("segment", d / "scene.tif", "--model", d / "m.pt", "--out", store, "--chunk", 32, "--block", 64)
    assert result.exit_code == 0, result.output
    mask = open_store(store).mask[...]
    assert set(np.unique(mask)) == {0, 1, 2, 255}
    return d, store, mask


def reference_tiff(path, labels, *, nodata=None, transform=UTM_TRANSFORM, crs=UTM):
    return write_tiff(path, labels[None].astype(np.uint8), nodata=nodata, transform=transform, crs=crs)


def test_a_reference_with_known_changes_gives_the_matrix_that_counts_them(scene, tmp_path):
    d, store, mask = scene
    reference = np.where(mask == 255, 1, mask)  # labelled where the mask is nodata: 200 such pixels
    moved = np.argwhere(mask == 0)[:40]  # 40 'a' pixels the reference calls 'c'
    reference[tuple(moved.T)] = 2
    reference[50:60, 0:30] = 99  # unlabelled in the reference
    path = reference_tiff(tmp_path / "ref.tif", reference, nodata=99)
    result = run("evaluate", store, "--labels", path, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    keep = (mask != 255) & (reference != 99)
    expected = np.zeros((3, 3), np.int64)
    np.add.at(expected, (reference[keep], mask[keep]), 1)
    assert expected[2, 0] >= 40  # the changes are in the matrix, reference rows, mask columns
    assert figures["confusion_matrix"] == expected.tolist()
    assert figures["reference_labelled_mask_nodata"] == 200
    assert figures["pixels"] == int(keep.sum())
    assert figures["classes"] == {k: figures["classes"][k] for k in CLASSES}
    assert figures["classes"]["a"]["recall"] == pytest.approx(1.0)  # every reference 'a' is still 'a'
    assert figures["classes"]["c"]["recall"] == pytest.approx(expected[2, 2] / expected[2].sum())
    assert figures["overall_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    assert 0 < figures["kappa"] < 1


def test_the_table_has_a_row_per_class_and_the_overall_figures(scene, tmp_path):
    d, store, mask = scene
    path = reference_tiff(tmp_path / "same.tif", mask, nodata=255)
    result = run("evaluate", store, "--labels", path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["class", "precision", "recall", "F1", "IoU", "reference", "px"]
    for k, name in enumerate(CLASSES):
        row = lines[3 + k].split()
        assert row[:5] == [name, "1.000", "1.000", "1.000", "1.000"]
        assert row[5] == f"{int((mask == k).sum()):,}"
    assert "overall accuracy 1.000, kappa 1.000" in result.stdout
    assert "confusion matrix (rows: reference, columns: mask):" in result.stdout
    assert f"{int((mask != 255).sum()):,} labelled pixels compared; 0 labelled" in result.stdout


def test_one_based_labels_need_the_offset_and_other_values_can_be_ignored(scene, tmp_path):
    d, store, mask = scene
    reference = np.where(mask == 255, 0, mask + 1)
    reference[0, 90:100] = 7
    path = reference_tiff(tmp_path / "one-based.tif", reference, nodata=0)
    result = run("evaluate", store, "--labels", path, "--label-offset", 1, "--ignore-value", 7, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["overall_accuracy"] == 1.0 and figures["pixels"] == int((mask != 255).sum()) - 10
    one_line_error(run("evaluate", store, "--labels", path, "--label-offset", 1), "holds 7 at row 0, col 90")
    one_line_error(run("evaluate", store, "--labels", path, "--ignore-value", 7), "pass --label-offset")


def test_points_in_another_crs_with_class_names(scene, tmp_path):
    d, store, mask = scene
    rng = np.random.default_rng(4)
    pixels = [(r, c) for r, c in rng.integers([0, 0], [100, 130], (60, 2)) if mask[r, c] != 255][:40]
    truth = [CLASSES[mask[r, c]] if i % 4 else CLASSES[(mask[r, c] + 1) % 3] for i, (r, c) in enumerate(pixels)]
    xs, ys = zip(*(UTM_TRANSFORM @ (c + 0.5, r + 0.5) for r, c in pixels), strict=True)
    lons, lats = warp_points(UTM, "EPSG:4326", xs, ys)
    path = tmp_path / "points.gpkg"
    points = shapely.points(np.column_stack([lons, lats]))
    pyogrio.raw.write(
        path, shapely.to_wkb(points), [np.array(truth, object)], ["label"], geometry_type="Point", crs="EPSG:4326"
    )
    result = run("evaluate", store, "--labels", path, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    expected = np.zeros((3, 3), np.int64)
    for (r, c), name in zip(pixels, truth, strict=True):
        expected[CLASSES.index(name), mask[r, c]] += 1
    assert figures["confusion_matrix"] == expected.tolist()
    assert figures["pixels"] == len(pixels) and np.trace(expected) == 30
    assert "40 features, attribute 'label'" in figures["reference"]


def test_a_reference_on_another_grid_is_resampled_onto_the_mask(scene, tmp_path):
    d, store, mask = scene
    bigger = np.full((120, 150), 9, np.uint8)  # the same pixels, its grid starts 5 rows and 7 cols earlier
    bigger[5:105, 7:137] = np.where(mask == 255, 9, mask)
    shifted = UTM_TRANSFORM @ Affine.translation(-7, -5)
    path = reference_tiff(tmp_path / "bigger.tif", bigger, nodata=9, transform=shifted)
    result = run("evaluate", store, "--labels", path, "--json")
    assert result.exit_code == 0, result.output
    assert "resampled onto it by nearest neighbour" in result.stderr
    figures = json.loads(result.stdout)
    assert figures["overall_accuracy"] == 1.0 and figures["pixels"] == int((mask != 255).sum())
    nocrs = reference_tiff(tmp_path / "nocrs.tif", bigger, nodata=9, transform=shifted, crs=None)
    one_line_error(run("evaluate", store, "--labels", nocrs), "is on another grid than the mask and it has no CRS")


def test_a_reference_beside_the_mask_is_refused(scene, tmp_path):
    d, store, mask = scene
    far = reference_tiff(tmp_path / "far.tif", mask, nodata=255, transform=UTM_TRANSFORM @ Affine.translation(5000, 0))
    one_line_error(run("evaluate", store, "--labels", far), "far.tif does not overlap the mask")
    # on the grid, but labelled only where the mask is nodata
    empty = reference_tiff(tmp_path / "empty.tif", np.where(mask == 255, 1, 255), nodata=255)
    one_line_error(run("evaluate", store, "--labels", empty), "has both a class and a label in")


def test_plot_writes_a_png(scene, tmp_path):
    pytest.importorskip("matplotlib")
    d, store, mask = scene
    path = reference_tiff(tmp_path / "same.tif", mask, nodata=255)
    result = run("evaluate", store, "--labels", path, "--plot", tmp_path / "confusion.png")
    assert result.exit_code == 0, result.output
    png = (tmp_path / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    one_line_error(run("evaluate", store, "--labels", path, "--plot", tmp_path / "no" / "c.png"), "cannot write")


def test_bad_inputs_are_one_line(scene, tmp_path):
    d, store, mask = scene
    one_line_error(run("evaluate", store, "--labels", tmp_path / "missing.tif"), "does not exist")
    one_line_error(run("evaluate", store, "--labels", tmp_path / "missing.gpkg"), "do not exist")
    one_line_error(run("evaluate", tmp_path / "nothing.zarr", "--labels", d / "scene.tif"), "does not exist")
    path = reference_tiff(tmp_path / "same.tif", mask, nodata=255)
    one_line_error(run("evaluate", store, "--labels", path, "--attribute", "class"), "is read as a raster")
    one_line_error(run("evaluate", store, "--labels", path, "--ignore-value", "x"), "must be a number")


def test_an_incomplete_store_is_refused(scene, tmp_path):
    d, store, mask = scene
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    open_store(copy, mode="r+").reopen()
    path = reference_tiff(tmp_path / "same.tif", mask, nodata=255)
    one_line_error(run("evaluate", copy, "--labels", path), "is incomplete")
    with pytest.raises(IncompleteStoreError):
        evaluate_store(copy, path)

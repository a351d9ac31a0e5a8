import pickle
import warnings

import numpy as np
import pytest
import rasterio

from gigaseg.errors import InputError, SourceError
from gigaseg.io.geotiff import GeoTiffSource, GigasegWarning
from gigaseg.tiler import Box
from tests.conftest import write_tiff


def test_windows_read_what_a_whole_read_gives(make_tiff):
    path = make_tiff((3, 300, 400))
    source = GeoTiffSource(path)
    whole, _ = source.read(Box((0, 0), (300, 400)))
    part, valid = source.read(Box((17, 250), (299, 400)))
    assert part.dtype == np.float32
    assert part.shape == (3, 282, 150)
    assert np.array_equal(part, whole[:, 17:299, 250:400])
    assert valid.all()


@pytest.mark.parametrize(("dtype", "native"), [("uint8", "uint8"), ("int16", "int16"), ("uint32", "float32")])
def test_native_reads_keep_small_integers_in_their_type(make_tiff, dtype, native):
    source = GeoTiffSource(make_tiff((3, 60, 70), dtype=dtype))
    box = Box((5, 9), (60, 50))
    data, valid = source.read_native(box)
    as_float, _ = source.read(box)
    assert data.dtype == native
    assert np.array_equal(data.astype(np.float32), as_float)
    assert np.moveaxis(data, 0, -1).flags.c_contiguous  # pixel-interleaved, as read() lays them out
    assert valid.all()


def dataset_mask(path, **kw):
    with rasterio.open(path) as ds:
        return ds.dataset_mask(**kw) != 0


def whole(source):
    return Box((0, 0), source.shape)


@pytest.fixture
def saturated(tmp_path, rng):
    """RGB uint8 with nodata 255: bright pixels saturate one band, a nodata corner saturates all three."""
    data = rng.integers(0, 250, (3, 300, 280)).astype(np.uint8)
    data[0, 10, 20] = 255  # bright snow: red saturated only
    data[1:, 40, 50] = 255  # two bands saturated
    data[1, 60, 70] = 255  # green saturated only
    data[:, 290:, :30] = 255  # nodata corner
    return data, write_tiff(tmp_path / "rgb.tif", data, nodata=255)


@pytest.mark.parametrize("method", ["read", "read_native"])
def test_a_pixel_is_nodata_only_where_all_bands_are_as_gdal_says(saturated, method):
    data, path = saturated
    source = GeoTiffSource(path)
    _, valid = getattr(source, method)(whole(source))
    assert valid[10, 20] and valid[40, 50] and valid[60, 70]
    assert not valid[290:, :30].any()
    assert np.array_equal(valid, dataset_mask(path))
    _, part = getattr(source, method)(Box((7, 13), (299, 61)))  # a window not on the blocks
    assert np.array_equal(part, valid[7:299, 13:61])


def test_the_any_band_rule_keeps_the_old_mask(saturated):
    data, path = saturated
    source = GeoTiffSource(path, nodata_rule="any-band")
    _, valid = source.read_native(whole(source))
    assert np.array_equal(valid, (data != 255).all(axis=0))
    with rasterio.open(path) as ds:
        assert np.array_equal(valid, (ds.read_masks() != 0).all(axis=0))  # GDAL's band masks, intersected
    assert source.describe() == {"bands": [1, 2, 3], "nodata_rule": "any-band"}
    assert GeoTiffSource(path).describe()["nodata_rule"] == "all-bands"


def test_selected_bands_are_nodata_when_all_of_them_are(saturated):
    data, path = saturated
    _, valid = GeoTiffSource(path, bands=[2, 3]).read(Box((0, 0), (300, 280)))
    assert not valid[40, 50]  # bands 2 and 3 saturated; band 1, not selected, does not save it
    assert valid[10, 20] and valid[60, 70]
    assert np.array_equal(valid, (data[1:] != 255).any(axis=0))


def test_an_unknown_nodata_rule_is_refused(saturated):
    with pytest.raises(InputError, match="nodata_rule must be all-bands .* or any-band, got 'gdal'"):
        GeoTiffSource(saturated[1], nodata_rule="gdal")


def test_a_nodata_value_float32_cannot_hold_is_gdals_to_test(tmp_path):
    # uint32 pixels are read as float32: 4294967200 and the nodata 4294967295 round to the same float
    data = np.full((2, 8, 8), 7, np.uint32)
    data[:, 1, 1] = 4294967200
    data[:, 2, 2] = 4294967295
    path = write_tiff(tmp_path / "u32.tif", data, nodata=4294967295)
    for rule in ("all-bands", "any-band"):
        source = GeoTiffSource(path, nodata_rule=rule)
        _, valid = source.read(whole(source))
        assert valid[1, 1] and not valid[2, 2]
        assert valid.sum() == 63


def test_band_selection_and_bad_bands(make_tiff):
    path = make_tiff((4, 40, 50))
    source = GeoTiffSource(path, bands=[3, 1])
    whole, _ = GeoTiffSource(path).read(Box((0, 0), (40, 50)))
    data, _ = source.read(Box((0, 0), (40, 50)))
    assert np.array_equal(data, whole[[2, 0]])
    with pytest.raises(InputError, match=r"bands \[5\] do not exist"):
        GeoTiffSource(path, bands=[5])


@pytest.mark.parametrize("rule", ["all-bands", "any-band"])
def test_nodata_and_nan_are_invalid(tmp_path, rule):
    data = np.ones((2, 20, 30), np.float32)
    data[0, 2, 3] = -9999
    data[:, 3, 4] = -9999
    data[1, 5, 6] = np.nan
    data[0, 7, 8] = np.inf
    source = GeoTiffSource(write_tiff(tmp_path / "f.tif", data, nodata=-9999), nodata_rule=rule)
    _, valid = source.read(Box((0, 0), (20, 30)))
    assert valid[2, 3] == (rule == "all-bands")  # one band nodata: valid to GDAL
    assert not valid[3, 4]
    assert not valid[5, 6]  # not finite in one band: invalid by either rule, no network takes it
    assert not valid[7, 8]
    assert valid.sum() == 20 * 30 - 4 + (rule == "all-bands")


def test_nan_nodata_of_a_float_raster(tmp_path):
    data = np.ones((2, 20, 30), np.float32)
    data[:, 2, 3] = np.nan
    data[0, 4, 5] = -1e30
    path = write_tiff(tmp_path / "nan.tif", data, nodata=np.nan)
    source = GeoTiffSource(path)
    _, valid = source.read(whole(source))
    assert np.array_equal(valid, dataset_mask(path))
    assert not valid[2, 3] and valid[4, 5]
    assert valid.sum() == 20 * 30 - 1


def test_internal_mask_is_honoured(tmp_path):
    path = write_tiff(tmp_path / "m.tif", np.full((1, 16, 16), 7, np.uint8))
    with rasterio.open(path, "r+") as ds:
        mask = np.full((16, 16), 255, np.uint8)
        mask[:4] = 0
        ds.write_mask(mask)
    _, valid = GeoTiffSource(path).read(Box((0, 0), (16, 16)))
    assert not valid[:4].any()
    assert valid[4:].all()


@pytest.mark.parametrize("rule", ["all-bands", "any-band"])
def test_an_internal_mask_band_is_the_dataset_mask(tmp_path, saturated, rule):
    data, _ = saturated
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        path = write_tiff(tmp_path / "m.tif", data, nodata=255)
        with rasterio.open(path, "r+") as ds:
            mask = np.full(data.shape[1:], 255, np.uint8)
            mask[:5, :] = 0
            mask[100:120, 200:] = 0
            ds.write_mask(mask)
    with rasterio.open(path) as ds:
        assert ds.files == [str(path)]  # internal, no .msk beside it
    source = GeoTiffSource(path, nodata_rule=rule)
    for method in (source.read, source.read_native):
        _, valid = method(whole(source))
        assert np.array_equal(valid, dataset_mask(path))
        assert np.array_equal(valid, mask != 0)  # GDAL: a mask band replaces the nodata value
    _, part = source.read(Box((3, 190), (110, 250)))
    assert np.array_equal(part, mask[3:110, 190:250] != 0)


@pytest.mark.parametrize("bands", [None, [1, 2, 3], [3]])
def test_an_alpha_band_is_the_dataset_mask(tmp_path, saturated, bands):
    data, _ = saturated
    alpha = np.full((1, *data.shape[1:]), 255, np.uint8)
    alpha[0, 50:60, :] = 0
    alpha[0, 70, 70] = 128  # partly transparent is valid
    rgba = np.concatenate([data, alpha])
    path = write_tiff(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    source = GeoTiffSource(path, bands=bands)
    _, valid = source.read_native(whole(source))
    assert np.array_equal(valid, dataset_mask(path))
    assert np.array_equal(valid, alpha[0] != 0)


def test_missing_and_non_raster_inputs_give_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        GeoTiffSource(tmp_path / "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(SourceError, match="cannot read .* as a raster"):
        GeoTiffSource(text)


def test_no_crs_warns_once_and_keeps_pixel_coordinates(tmp_path, pointwise_model):
    """gigaseg's own warning, once: not rasterio's NotGeoreferencedWarning besides it, on
    reading nor on exporting the mask (which has no georeferencing to write either)."""
    from gigaseg import segment

    path = write_tiff(tmp_path / "plain.tif", np.zeros((3, 8, 8), np.uint8), crs=None, transform=None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        source = GeoTiffSource(path)
        segment(path, pointwise_model, tmp_path / "m.tif")
    assert source.georef.crs_wkt is None
    assert {str(w.message) for w in seen} == {f"{path} has no CRS: the mask keeps pixel coordinates"}
    assert all(w.category is GigasegWarning for w in seen)
    with rasterio.open(tmp_path / "m.tif") as exported:
        assert exported.crs is None and exported.transform.is_identity


def test_sources_survive_pickling_and_reopen(make_tiff):
    source = GeoTiffSource(make_tiff((3, 30, 40)))
    before, _ = source.read(Box((0, 0), (30, 40)))
    with warnings.catch_warnings():
        copy = pickle.loads(pickle.dumps(source))
    after, _ = copy.read(Box((0, 0), (30, 40)))
    assert np.array_equal(before, after)


def test_the_block_cache_is_given_in_bytes(monkeypatch):
    # rasterio hands an integer GDAL_CACHEMAX to GDAL as bytes: 64 would be a 64-byte
    # cache, and every strip and every mask read would decode its blocks again.
    from gigaseg.io.geotiff import _read_options

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert _read_options() == {"GDAL_CACHEMAX": 64 * 2**20}
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    assert _read_options() == {}

import pickle
import warnings

import numpy as np
import pytest

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


def test_a_pixel_is_invalid_where_any_band_is_nodata(tmp_path):
    data = np.full((3, 10, 12), 5, np.uint8)
    data[1, 2, 3] = 0
    data[2, 7, 1] = 0
    _, valid = GeoTiffSource(write_tiff(tmp_path / "n.tif", data, nodata=0)).read_native(Box((0, 0), (10, 12)))
    assert not valid[2, 3] and not valid[7, 1]
    assert valid.sum() == 10 * 12 - 2


def test_band_selection_and_bad_bands(make_tiff):
    path = make_tiff((4, 40, 50))
    source = GeoTiffSource(path, bands=[3, 1])
    whole, _ = GeoTiffSource(path).read(Box((0, 0), (40, 50)))
    data, _ = source.read(Box((0, 0), (40, 50)))
    assert np.array_equal(data, whole[[2, 0]])
    with pytest.raises(InputError, match=r"bands \[5\] do not exist"):
        GeoTiffSource(path, bands=[5])


def test_nodata_and_nan_are_invalid(tmp_path):
    data = np.ones((2, 20, 30), np.float32)
    data[0, 2, 3] = -9999
    data[1, 5, 6] = np.nan
    data[0, 7, 8] = np.inf
    source = GeoTiffSource(write_tiff(tmp_path / "f.tif", data, nodata=-9999))
    _, valid = source.read(Box((0, 0), (20, 30)))
    assert not valid[2, 3]
    assert not valid[5, 6]
    assert not valid[7, 8]
    assert valid.sum() == 20 * 30 - 3


def test_internal_mask_is_honoured(tmp_path):
    import rasterio

    path = write_tiff(tmp_path / "m.tif", np.full((1, 16, 16), 7, np.uint8))
    with rasterio.open(path, "r+") as ds:
        mask = np.full((16, 16), 255, np.uint8)
        mask[:4] = 0
        ds.write_mask(mask)
    _, valid = GeoTiffSource(path).read(Box((0, 0), (16, 16)))
    assert not valid[:4].any()
    assert valid[4:].all()


def test_missing_and_non_raster_inputs_give_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        GeoTiffSource(tmp_path / "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(SourceError, match="cannot read .* as a raster"):
        GeoTiffSource(text)


def test_no_crs_warns_and_keeps_pixel_coordinates(tmp_path):
    path = write_tiff(tmp_path / "plain.tif", np.zeros((1, 8, 8), np.uint8), crs=None, transform=None)
    with pytest.warns(GigasegWarning, match="no CRS"):
        source = GeoTiffSource(path)
    assert source.georef.crs_wkt is None


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

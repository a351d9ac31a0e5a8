"""The source contract, run against every source; open_source, 2.5-D context, sampling."""

import pickle

import numpy as np
import pytest

from gigaseg.errors import InputError
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.nifti import NiftiSource
from gigaseg.io.sources import SliceContext, Source, open_source, sample_voxels
from gigaseg.tiler import Box
from tests.conftest import organ_nifti, write_tiff


def boxes(shape, seed=0, count=6):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in shape]
        stop = [int(rng.integers(a + 1, n + 1)) for a, n in zip(start, shape, strict=True)]
        yield Box(tuple(start), tuple(stop))


class SourceContract:
    """What the pipeline relies on, for every kind of source."""

    @pytest.fixture
    def source(self, tmp_path):
        raise NotImplementedError

    def test_is_a_source_with_spatial_shape_and_spacing(self, source):
        assert isinstance(source, Source)
        assert len(source.spacing) == len(source.shape) in (2, 3)
        assert all(s > 0 for s in source.spacing)
        assert source.unit in ("m", "mm")
        assert isinstance(source.describe(), dict)

    def test_any_box_reads_what_a_whole_read_gives(self, source):
        whole, whole_valid = source.read(Box((0,) * len(source.shape), source.shape))
        assert whole.dtype == np.float32
        assert whole.shape == (source.channels, *source.shape)
        assert whole_valid.shape == source.shape and whole_valid.dtype == bool
        for box in boxes(source.shape):
            data, valid = source.read(box)
            assert np.array_equal(data, whole[(slice(None), *box.slices())])
            assert np.array_equal(valid, whole_valid[box.slices()])

    def test_pickle_round_trip_reads_the_same(self, source):
        box = next(boxes(source.shape, seed=3))
        before, _ = source.read(box)
        copy = pickle.loads(pickle.dumps(source))
        after, _ = copy.read(box)
        assert np.array_equal(before, after)
        assert len(pickle.dumps(source)) < 100_000  # state, never pixels

    def test_close_then_read_reopens(self, source):
        box = next(boxes(source.shape, seed=4))
        before, _ = source.read(box)
        source.close()
        after, _ = source.read(box)
        assert np.array_equal(before, after)


class TestGeoTiffSource(SourceContract):
    @pytest.fixture
    def source(self, make_tiff):
        return GeoTiffSource(make_tiff((3, 37, 45)))


class TestNiftiSource(SourceContract):
    @pytest.fixture
    def source(self, tmp_path):
        return NiftiSource(organ_nifti(tmp_path / "ct.nii", slope=0.5, inter=-10.0))


class TestNiftiGzSource(SourceContract):
    @pytest.fixture
    def source(self, tmp_path):
        return NiftiSource(organ_nifti(tmp_path / "ct.nii.gz"), cache_dir=tmp_path / "cache")


class TestSliceContext(SourceContract):
    @pytest.fixture
    def source(self, tmp_path):
        return SliceContext(NiftiSource(organ_nifti(tmp_path / "ct.nii")), axis=1, slices=2)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_context_channels_are_the_neighbouring_slices_with_edges_repeated(tmp_path, axis, reverse):
    base = NiftiSource(organ_nifti(tmp_path / "ct.nii", shape=(9, 8, 7)))
    whole, _ = base.read(Box((0, 0, 0), base.shape))
    source = SliceContext(base, axis=axis, slices=2, reverse=reverse)
    box = Box((1, 2, 0), (6, 8, 9))
    data, _ = source.read(box)
    assert data.shape == (5, *box.shape)
    offsets = [2, 1, 0, -1, -2] if reverse else [-2, -1, 0, 1, 2]
    for channel, offset in enumerate(offsets):
        index = np.clip(np.arange(box.start[axis], box.stop[axis]) + offset, 0, base.shape[axis] - 1)
        expected = np.take(whole[0], index, axis=axis)[box.with_axis(axis, 0, box.shape[axis]).slices()]
        assert np.array_equal(data[channel], expected)


def test_open_source_dispatches_on_the_suffix(tmp_path, make_tiff):
    assert isinstance(open_source(make_tiff((1, 8, 8))), GeoTiffSource)
    assert isinstance(open_source(organ_nifti(tmp_path / "v.nii")), NiftiSource)
    with pytest.raises(InputError, match="--bands selects raster bands"):
        open_source(tmp_path / "v.nii", bands=[1])
    with pytest.raises(InputError, match="--volume selects volumes of a NIfTI file"):
        open_source(make_tiff((1, 8, 8), name="b.tif"), volume=0)


def test_open_source_hands_the_nodata_rule_to_a_raster(make_tiff):
    assert open_source(make_tiff((3, 8, 8)), nodata_rule="any-band").describe()["nodata_rule"] == "any-band"
    assert open_source(make_tiff((3, 8, 8), name="b.tif")).describe()["nodata_rule"] == "all-bands"


def test_sample_is_a_strided_subset_of_the_valid_voxels(tmp_path, rng):
    data = rng.normal(size=(31, 29, 27)).astype(np.float32)
    data[:3] = np.nan
    from tests.conftest import write_nifti

    source = NiftiSource(write_nifti(tmp_path / "n.nii", data))
    sample = sample_voxels(source, limit=2000)
    assert sample.shape[0] == 1 and 500 < sample.shape[1] <= 2000
    assert np.isfinite(sample).all()
    assert np.isin(sample, data).all()
    whole = sample_voxels(source, limit=10**6)
    assert np.array_equal(np.sort(whole[0]), np.sort(data[np.isfinite(data)]))


def test_sample_of_a_raster(tmp_path):
    data = np.arange(3 * 40 * 50, dtype=np.float32).reshape(3, 40, 50)
    sample = sample_voxels(GeoTiffSource(write_tiff(tmp_path / "r.tif", data)), limit=100)
    assert sample.shape[0] == 3 and 20 < sample.shape[1] <= 100
    assert np.array_equal(sample[1] - sample[0], np.full(sample.shape[1], 2000.0))

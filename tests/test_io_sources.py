"""The source contract, run against every source; open_source, 2.5-D context, sampling."""

import json
import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from gigaseg.errors import InputError
from gigaseg.io.array import ArraySource
from gigaseg.io.georef import Georef
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.io.nifti import NiftiSource
from gigaseg.io.niftiref import NiftiRef
from gigaseg.io.sources import SliceContext, Source, open_source, sample_voxels
from gigaseg.tiler import Box
from tests.conftest import organ_nifti, write_nifti, write_tiff


def boxes(shape, seed=0, count=6):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in shape]
        stop = [int(rng.integers(a + 1, n + 1)) for a, n in zip(start, shape, strict=True)]
        yield Box(tuple(start), tuple(stop))


@dataclass
class Case:
    """A source on a tmp file and what it must read: the values and validity written."""

    source: Source
    data: np.ndarray  # float32 (channels, *shape)
    valid: np.ndarray  # bool shape
    spacing: tuple[float, ...]


def geotiff_case(tmp_path, rng):
    """uint16, nodata 0, GDAL's all-bands rule: invalid only where every band holds 0."""
    data = rng.integers(1, 1000, (3, 61, 83)).astype(np.uint16)
    data[:, 5:9, 10:20] = 0  # nodata in every band: invalid
    data[0, 20:25, 30:35] = 0  # nodata in one band: still valid
    data[:, -1, -3:] = 0  # at the far corner
    source = GeoTiffSource(write_tiff(tmp_path / "r.tif", data, nodata=0))
    return Case(source, data.astype(np.float32), (data != 0).any(axis=0), (10.0, 10.0))


NIFTI_AFFINE = np.diag([0.8, 0.9, 2.5, 1.0])  # voxel sizes along i, j, k in mm


def nifti_case(tmp_path, rng):
    """int16 with scl_slope/scl_inter: every voxel valid, values scaled, axes (k, j, i)."""
    raw = rng.integers(-1000, 1000, (23, 26, 20)).astype(np.int16)  # (i, j, k)
    path = write_nifti(tmp_path / "ct.nii", raw, NIFTI_AFFINE, slope=0.5, inter=-10.0)
    data = raw.T.astype(np.float32)[None]
    data *= np.float32(0.5)
    data += np.float32(-10.0)
    return Case(NiftiSource(path), data, np.ones(raw.T.shape, bool), (2.5, 0.9, 0.8))


def nifti_gz_case(tmp_path, rng):
    """float32 through the decompression cache: non-finite voxels are invalid."""
    raw = rng.normal(size=(21, 19, 17)).astype(np.float32)  # (i, j, k)
    raw[3, 4, 5] = np.nan
    raw[-1, -1, -1] = np.inf
    path = write_nifti(tmp_path / "v.nii.gz", raw, NIFTI_AFFINE)
    data = np.ascontiguousarray(raw.T)[None]
    return Case(NiftiSource(path, cache_dir=tmp_path / "cache"), data, np.isfinite(data[0]), (2.5, 0.9, 0.8))


def npy_image_case(tmp_path, rng):
    """A channels-first image, two of its bands chosen (in another order); NaN is invalid."""
    values = rng.normal(100, 20, (3, 64, 80)).astype(np.float32)
    values[2, 7, 9] = np.nan  # in a chosen band: invalid
    values[1, 8, 9] = np.nan  # in a band left out: no matter
    values[0, -1, -1] = np.nan
    np.save(tmp_path / "image.npy", values)
    source = open_source(tmp_path / "image.npy", bands=[3, 1], spatial_dims=2)
    data = values[[2, 0]]
    return Case(source, data, np.isfinite(data).all(axis=0), (1.0, 1.0))


def npy_volume_case(tmp_path, rng):
    """uint8 labels without a channel axis: a one-channel volume."""
    values = rng.integers(0, 5, (9, 10, 11)).astype(np.uint8)
    np.save(tmp_path / "labels.npy", values)
    return Case(
        open_source(tmp_path / "labels.npy"),
        values[None].astype(np.float32),
        np.ones(values.shape, bool),
        (1.0, 1.0, 1.0),
    )


def slice_context_case(tmp_path, rng):
    """2.5-D context over the NIfTI volume: neighbours along y, the edge slice repeated."""
    base = nifti_case(tmp_path, rng)
    axis, k = 1, 1
    n = base.data.shape[axis + 1]
    shifted = [np.take(base.data[0], np.clip(np.arange(n) + d, 0, n - 1), axis=axis) for d in range(-k, k + 1)]
    return Case(SliceContext(base.source, axis=axis, slices=k), np.stack(shifted), base.valid, base.spacing)


CASES = {
    "geotiff": geotiff_case,
    "nifti": nifti_case,
    "nifti-gz": nifti_gz_case,
    "npy-image": npy_image_case,
    "npy-volume": npy_volume_case,
    "slice-context": slice_context_case,
}


def edge_boxes(shape):
    """Boxes on the scene's edges and corners: first and last rows, columns, planes, single pixels."""
    ndim = len(shape)
    whole = Box((0,) * ndim, tuple(shape))
    yield Box((0,) * ndim, (1,) * ndim)
    yield Box(tuple(n - 1 for n in shape), tuple(shape))
    for axis, n in enumerate(shape):
        yield whole.with_axis(axis, 0, 1)
        yield whole.with_axis(axis, n - 1, n)
        yield whole.with_axis(axis, n - min(n, 5), n)


def assert_reads(case, box, data, valid):
    """``box`` read as float32 ``(channels, *box.shape)`` and bool ``box.shape``, as written."""
    assert isinstance(data, np.ndarray) and data.dtype == np.float32
    assert data.shape == (case.source.channels, *box.shape)
    assert isinstance(valid, np.ndarray) and valid.dtype == bool and valid.shape == box.shape
    np.testing.assert_array_equal(valid, case.valid[box.slices()])
    expected = case.data[(slice(None), *box.slices())]
    np.testing.assert_array_equal(data[:, valid], expected[:, valid])  # invalid pixels may hold anything


class TestSourceContract:
    """What the pipeline relies on (:class:`gigaseg.io.sources.Source`), checked for every kind of source
    against the values written to its file."""

    @pytest.fixture(params=list(CASES))
    def case(self, request, tmp_path, rng):
        case = CASES[request.param](tmp_path, rng)
        yield case
        case.source.close()

    def test_is_a_source_with_the_contract_s_types(self, case):
        source = case.source
        assert isinstance(source, Source)
        assert isinstance(source.path, str) and source.path
        assert isinstance(source.shape, tuple) and all(isinstance(n, int) for n in source.shape)
        assert source.shape == case.valid.shape and len(source.shape) in (2, 3)
        assert isinstance(source.channels, int) and source.channels == case.data.shape[0]
        assert isinstance(source.spacing, tuple) and all(isinstance(s, float) for s in source.spacing)
        assert source.spacing == pytest.approx(case.spacing)
        assert source.unit == ("m" if len(source.shape) == 2 else "mm")
        assert isinstance(source.georef, Georef if len(source.shape) == 2 else NiftiRef)

    def test_a_whole_read_is_the_written_data(self, case):
        box = Box((0,) * len(case.source.shape), case.source.shape)
        data, valid = case.source.read(box)
        assert_reads(case, box, data, valid)
        assert not case.valid.all() or isinstance(case.source.source if hasattr(case, "x") else 0, int)

    @pytest.mark.parametrize("kind", ["random", "edges"])
    def test_boxes_read_the_written_data(self, case, kind):
        shape = case.source.shape
        for box in boxes(shape) if kind == "random" else edge_boxes(shape):
            assert_reads(case, box, *case.source.read(box))

    def test_reads_are_fresh_arrays_the_caller_may_change(self, case):
        box = next(boxes(case.source.shape, seed=2))
        data, valid = case.source.read(box)
        data += 1
        valid[...] = False
        assert_reads(case, box, *case.source.read(box))

    def test_pickle_round_trip_reads_the_same_from_state_alone(self, case):
        box = next(boxes(case.source.shape, seed=3))
        case.source.read(box)  # handles open: they must not travel
        state = pickle.dumps(case.source)
        assert len(state) < min(100_000, case.data.nbytes // 4)  # path and options, never pixels
        copy = pickle.loads(state)
        assert copy.shape == case.source.shape and copy.channels == case.source.channels
        assert_reads(case, box, *copy.read(box))
        copy.close()

    def test_close_then_read_reopens(self, case):
        box = next(boxes(case.source.shape, seed=4))
        assert_reads(case, box, *case.source.read(box))
        case.source.close()
        assert_reads(case, box, *case.source.read(box))
        case.source.close()
        case.source.close()  # closing twice is harmless

    def test_describe_is_json(self, case):
        described = case.source.describe()
        assert isinstance(described, dict)
        assert json.loads(json.dumps(described)) == described


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
    with pytest.raises(InputError, match="bands picks the channels of a raster"):
        open_source(tmp_path / "v.nii", bands=[1])
    with pytest.raises(InputError, match="volume selects volumes of a NIfTI file"):
        open_source(make_tiff((1, 8, 8), name="b.tif"), volume=0)
    np.save(tmp_path / "a.npy", np.zeros((2, 8, 8), np.float32))
    assert isinstance(open_source(tmp_path / "a.npy"), ArraySource)
    with pytest.raises(InputError, match="volume selects volumes of a NIfTI file"):
        open_source(tmp_path / "a.npy", volume=0)


def test_open_source_reads_npy_axes_as_told(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    np.save(tmp_path / "b.npy", np.zeros((3, 4, 5), np.uint8))
    with open(tmp_path / "c.NPY", "wb") as f:  # np.save would add ".npy"
        np.save(f, np.zeros((4, 5), np.uint8))
    volume = open_source(tmp_path / "a.npy")  # four axes: a volume, channels first
    assert (volume.shape, volume.channels) == ((3, 4, 5), 2)
    plane = open_source(tmp_path / "b.npy")  # three: a one-channel volume
    assert (plane.shape, plane.channels) == ((3, 4, 5), 1)
    image = open_source(tmp_path / "b.npy", spatial_dims=2)  # unless told it is a channels-first image
    assert (image.shape, image.channels, image.unit) == ((4, 5), 3, "m")
    assert open_source(tmp_path / "c.NPY").shape == (4, 5)
    second = open_source(tmp_path / "a.npy", bands=[2])
    np.testing.assert_array_equal(second.read(Box((0, 0, 0), (3, 4, 5)))[0], np.load(tmp_path / "a.npy")[1:])
    with pytest.raises(InputError, match=r"\[3\] do not exist"):
        open_source(tmp_path / "a.npy", bands=[3])


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

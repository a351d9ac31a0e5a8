"""ArraySource: numpy arrays (and memory-mapped .npy files) behind the source contract."""

import pickle

import numpy as np
import pytest

from gigaseg.errors import InputError, SourceError
from gigaseg.io.array import ArraySource
from gigaseg.tiler import Box


def test_reads_boxes_of_2d_and_3d_arrays():
    image = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    source = ArraySource(image, spatial_dims=2)
    assert source.shape == (5, 7) and source.channels == 2
    data, valid = source.read(Box((1, 2), (4, 7)))
    assert data.dtype == np.float32 and data.shape == (2, 3, 5) and valid.all()
    np.testing.assert_array_equal(data, image[:, 1:4, 2:7])
    volume = ArraySource(np.zeros((4, 5, 6)), spatial_dims=3)
    assert volume.shape == (4, 5, 6) and volume.channels == 1
    assert volume.read(Box((0, 0, 0), (2, 2, 2)))[0].shape == (1, 2, 2, 2)


def test_reads_are_copies_callers_may_change():
    image = np.ones((1, 4, 4), np.float32)
    data, _ = ArraySource(image, spatial_dims=2).read(Box((0, 0), (4, 4)))
    data *= 5
    assert (image == 1).all()


def test_nodata_and_non_finite_values_are_invalid():
    image = np.ones((2, 3, 3), np.float32)
    image[0, 0, 0] = -1
    image[1, 2, 2] = np.nan
    _, valid = ArraySource(image, spatial_dims=2, nodata=-1).read(Box((0, 0), (3, 3)))
    assert valid.sum() == 7 and not valid[0, 0] and not valid[2, 2]


def test_npy_files_are_memory_mapped_and_pickle(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    source = ArraySource.from_npy(tmp_path / "v.npy", spatial_dims=3)
    assert isinstance(source.array, np.memmap)
    data, _ = source.read(Box((1, 1, 1), (2, 3, 4)))
    data += 1  # a memory map is read-only; the copy is not
    again = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(again.read(Box((1, 1, 1), (2, 3, 4)))[0], data - 1)


def test_bad_arrays_and_boxes_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="cannot hold 2-D data"):
        ArraySource(np.zeros((2, 3, 4, 5)), spatial_dims=2)
    with pytest.raises(InputError, match="outside"):
        ArraySource(np.zeros((4, 4)), spatial_dims=2).read(Box((2, 2), (5, 5)))
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(SourceError, match="cannot read"):
        ArraySource.from_npy(tmp_path / "bad.npy", spatial_dims=2)


def test_bands_are_chosen_without_copying_the_array(tmp_path):
    values = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    np.save(tmp_path / "i.npy", values)
    source = ArraySource.from_npy(tmp_path / "i.npy", spatial_dims=2, bands=[3, 1])
    assert isinstance(source.array, np.memmap) and source.array.shape == (3, 4, 5)
    assert source.channels == 2 and source.band_names == ["band3", "band1"]
    data, _ = source.read(Box((1, 1), (4, 5)))
    np.testing.assert_array_equal(data, values[[2, 0], 1:4, 1:5])
    assert source.describe()["bands"] == [3, 1]
    with pytest.raises(InputError, match=r"\[0, 4\] do not exist"):
        ArraySource(values, spatial_dims=2, bands=[0, 4])


def test_a_mapped_file_pickles_as_its_path_and_maps_again(tmp_path):
    values = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    np.save(tmp_path / "i.npy", values)
    source = ArraySource.from_npy(tmp_path / "i.npy", spatial_dims=2)
    box = Box((3, 5), (60, 64))
    state = pickle.dumps(source)
    assert len(state) < 4000 and source._array is not None  # pickling leaves the original alone
    copy = pickle.loads(state)
    assert copy._array is None  # mapped on first use
    np.testing.assert_array_equal(copy.read(box)[0], values[:, 3:60, 5:64])
    source.close()
    assert source._array is None
    np.testing.assert_array_equal(source.read(box)[0], values[:, 3:60, 5:64])
    in_memory = ArraySource(values, spatial_dims=2)
    in_memory.close()  # nothing to map again: the values stay
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(in_memory)).read(box)[0], values[:, 3:60, 5:64])


def test_a_file_changed_under_a_source_is_a_clear_error(tmp_path):
    np.save(tmp_path / "i.npy", np.zeros((4, 5), np.float32))
    source = ArraySource.from_npy(tmp_path / "i.npy", spatial_dims=2)
    np.save(tmp_path / "i.npy", np.zeros((4, 6), np.float32))
    source.close()
    with pytest.raises(SourceError, match="changed since it was opened"):
        source.read(Box((0, 0), (1, 1)))
    with pytest.raises(SourceError, match="does not exist"):
        ArraySource.from_npy(tmp_path / "missing.npy")


def test_images_lie_in_pixel_coordinates_and_volumes_are_aligned_niftis():
    from gigaseg.io.georef import Georef
    from gigaseg.io.niftiref import NiftiRef

    image = ArraySource(np.zeros((2, 4, 5)), spatial_dims=2)
    assert image.unit == "m" and image.spacing == (1.0, 1.0)
    assert image.georef == Georef(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    coarse = ArraySource(np.zeros((4, 5)), spatial_dims=2, spacing=(2.0, 3.0))
    assert coarse.georef.pixel_size == coarse.spacing == (2.0, 3.0)
    volume = ArraySource(np.zeros((4, 5, 6)), spatial_dims=3, spacing=(2.5, 0.5, 0.75))
    assert volume.unit == "mm" and volume.spacing == (2.5, 0.5, 0.75)
    assert isinstance(volume.georef, NiftiRef)
    assert volume.georef.shape == (6, 5, 4)  # (i, j, k) = (x, y, z)
    np.testing.assert_array_equal(volume.georef.matrix, np.diag([0.75, 0.5, 2.5, 1.0]))
    with pytest.raises(InputError, match="spacing"):
        ArraySource(np.zeros((4, 5)), spatial_dims=2, spacing=(1.0, 0.0))
    with pytest.raises(InputError, match="2-D or 3-D"):
        ArraySource(np.zeros(5), spatial_dims=1)

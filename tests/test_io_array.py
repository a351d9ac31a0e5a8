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

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gigaseg.tiler.pad import mirror_index, pad_to


@given(st.integers(1, 12), st.integers(0, 40))
def test_mirror_index_is_numpys_symmetric_padding(n, extra):
    a = np.arange(n)
    assert np.array_equal(a[mirror_index(n, n + extra)], np.pad(a, (0, extra), mode="symmetric"))


@given(st.lists(st.integers(1, 9), min_size=2, max_size=3), st.lists(st.integers(0, 12), min_size=3, max_size=3))
@settings(max_examples=50, deadline=None)
def test_pad_to_pads_every_spatial_axis_at_its_end_and_keeps_the_leading_ones(shape, extra):
    array = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    target = tuple(n + e for n, e in zip(shape, extra, strict=False))
    expected = np.pad(array, [(0, 0)] + [(0, t - n) for t, n in zip(target, shape, strict=True)], mode="symmetric")
    assert np.array_equal(pad_to(torch.from_numpy(array), target).numpy(), expected)

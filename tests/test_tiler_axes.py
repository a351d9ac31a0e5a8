import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigaseg.tiler.axes import AxisView, contiguous


@st.composite
def views(draw):
    ndim = draw(st.sampled_from([2, 3]))
    order = tuple(draw(st.permutations(range(ndim))))
    flip = tuple(draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim)))
    return AxisView(order, flip)


@given(views(), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_to_scene_undoes_to_model(view, seed):
    shape = (2, 3, *(4 + a for a in range(len(view.order))))
    array = np.random.default_rng(seed).random(shape)
    model = view.to_model(array)
    assert model.shape[2:] == view.shape_to_model(shape[2:])
    assert np.array_equal(view.to_scene(model), array)


def test_model_axis_m_shows_scene_axis_order_m_reversed_where_flipped():
    array = np.arange(2 * 3 * 4).reshape(1, 1, 2, 3, 4)
    view = AxisView((2, 0, 1), (True, False, False))
    model = view.to_model(array)
    for z, y, x in itertools.product(range(2), range(3), range(4)):
        assert model[0, 0, 3 - x, z, y] == array[0, 0, z, y, x]
    assert view.model_axis(2) == 0
    assert AxisView.identity(3).is_identity and not view.is_identity


def test_a_view_must_be_a_permutation():
    with pytest.raises(ValueError, match="permutation"):
        AxisView((0, 0, 1), (False,) * 3)


@pytest.mark.parametrize("shape", [(1, 4, 19, 10, 17), (2, 3, 5, 7), (9, 4)])
def test_contiguous_copies_every_transpose_and_flip_exactly(shape):
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    for order in itertools.permutations(range(len(shape))):
        for flip in [(), (0,), (len(shape) - 1,)]:
            view = array.transpose(order)
            view = np.flip(view, flip) if flip else view
            copied = contiguous(view)
            assert copied.flags.c_contiguous
            assert np.array_equal(copied, view)

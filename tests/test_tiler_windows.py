import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gigaseg.errors import InputError
from gigaseg.tiler import WINDOWS, blend_window


@pytest.mark.parametrize("kind", sorted(WINDOWS))
@given(shape=st.lists(st.integers(1, 40), min_size=2, max_size=3).map(tuple))
def test_windows_are_positive_symmetric_and_peak_at_one(kind, shape):
    w = blend_window(kind, shape)
    assert w.shape == shape
    assert w.dtype == np.float32
    assert (w > 0).all()
    assert np.isclose(w.max(), 1.0)
    if kind == "nnunet":  # centred on voxel n // 2, as nnU-Net's: symmetric for odd sides only
        return
    for axis in range(len(shape)):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=1e-6)


@pytest.mark.parametrize("shape", [(32, 32, 32), (24, 40, 33), (128, 112, 160)])
def test_the_nnunet_window_is_nnunets_own(shape):
    """nnU-Net's compute_gaussian, up to its scale (a constant weight factor changes no blend)."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    theirs = compute_gaussian(shape, sigma_scale=1 / 8, dtype=torch.float64, device=torch.device("cpu")).numpy()
    ours = blend_window("nnunet", shape)
    np.testing.assert_allclose(ours, theirs / theirs.max(), rtol=1e-5, atol=1e-6)  # corners cut: ~1e-7


def test_gaussian_falls_off_towards_the_edges():
    w = blend_window("gaussian", (64, 64))
    assert w[32, 32] > w[32, 8] > w[32, 0] > 0


def test_callables_are_accepted_and_unknown_names_refused():
    w = blend_window(lambda n: np.linspace(1, 2, n), (4, 4))
    assert np.isclose(w[-1, -1], 1.0)
    with pytest.raises(InputError, match="must be one of"):
        blend_window("hamming", (4, 4))

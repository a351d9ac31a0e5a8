import numpy as np
import pytest

from gigaseg.errors import InputError
from gigaseg.models import ModelCard, Predictor, create_model
from gigaseg.models.views import ViewPredictor
from gigaseg.tiler.axes import AxisView


def test_a_view_predictor_is_the_network_on_the_viewed_tile():
    card = ModelCard(arch="conv3d", in_channels=2, classes=["a", "b"], spatial_dims=3, arch_kwargs={"kernel_size": 3})
    predictor = Predictor(create_model(card), card, device="cpu", batch_size=2)
    view = AxisView((2, 0, 1), (False, True, False))
    tiles = np.random.default_rng(0).random((3, 2, 4, 5, 6), dtype=np.float32)
    wrapped = ViewPredictor(predictor, view)
    got = wrapped(tiles)
    assert got.shape == (3, 2, 4, 5, 6)
    # No copy back to the scene's order: the scores stay laid out as the network gave them.
    assert wrapped.scores_order == view.order and view.to_model(got).flags.c_contiguous
    assert np.array_equal(got, view.to_scene(predictor(np.ascontiguousarray(view.to_model(tiles)))))


def test_slice_wise_squeezes_the_slice_axis_for_a_2d_network():
    small = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    card = ModelCard(arch="unet", encoder="resnet18", in_channels=1, classes=["a", "b"], arch_kwargs=small)
    predictor = Predictor(create_model(card), card, device="cpu", batch_size=2)
    view = AxisView((2, 1, 0), (False,) * 3)
    wrapped = ViewPredictor(predictor, view, slice_axis=2)  # model axis 2 = scene axis 0
    tiles = np.random.default_rng(0).random((2, 1, 1, 16, 8), dtype=np.float32)
    got = wrapped(tiles)
    assert got.shape == (2, 2, 1, 16, 8)
    expected = predictor(np.ascontiguousarray(tiles[:, :, 0].transpose(0, 1, 3, 2)))
    assert np.array_equal(got[:, :, 0], expected.transpose(0, 1, 3, 2))
    assert wrapped.model_shape((1, 16, 8)) == (8, 16)
    wrapped.check_tile((1, 16, 8))  # the slice axis is exempt from the stride
    with pytest.raises(InputError, match="not a multiple of 8"):
        wrapped.check_tile((1, 16, 6))

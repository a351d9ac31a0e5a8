"""The pure refiners on generated problems with a known truth, and their geometry."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gigaseg.errors import InputError
from gigaseg.refine import (
    REFINERS,
    CRFParams,
    RefineOptions,
    SuperpixelParams,
    crf_params,
    dense_crf,
    feature_bands,
    fit_stretch,
    get_refiner,
    halo_width,
    labels_from,
    resolve_params,
    superpixel_vote,
    window_box,
)
from gigaseg.refine.features import sample_boxes
from gigaseg.refine.metrics import boundary_f1, mean_iou
from gigaseg.refine.synthetic import blurred_probabilities, shapes_image, shapes_labels
from gigaseg.tiler import BlockGrid, Box

K = 3


def problem(shape, *, seed=1, blur=4.0):
    truth = shapes_labels(shape, classes=K, count=12 if len(shape) == 2 else 6, seed=seed)
    image = shapes_image(truth, classes=K, seed=seed).astype(np.float32)
    probs = blurred_probabilities(truth, classes=K, blur=blur, seed=seed)
    return truth, image, probs


def scores(probs, truth, valid=None):
    labels = probs.argmax(0)
    if valid is not None:  # compare on the valid rectangle only
        keep = np.ix_(valid.any(axis=1), valid.any(axis=0))
        labels, truth = labels[keep], truth[keep]
    return mean_iou(labels, truth, classes=K), boundary_f1(labels, truth, tolerance=1)


def refine_blockwise(refiner, probs, image, valid, *, params, halo):
    """Refine 96-pixel blocks each with its halo, keep each block's own pixels: the pipeline's way."""
    shape = valid.shape
    blocks = BlockGrid.create(shape, max_block=96, chunk=32)
    tiled = np.zeros_like(probs)
    for index in blocks.indices():
        box = blocks.block_box(index)
        window = window_box(box, halo, shape)
        part = refiner(
            probs[(slice(None), *window.slices())],
            image[(slice(None), *window.slices())],
            valid[window.slices()],
            params=params,
            origin=window.start,
        )
        tiled[(slice(None), *box.slices())] = part[(slice(None), *box.slices(window.start))]
    return tiled


def test_crf_snaps_blurred_2d_probabilities_to_edges():
    truth, image, probs = problem((192, 224))
    valid = np.ones(truth.shape, bool)
    raw_iou, raw_f = scores(probs, truth)
    iou, f = scores(dense_crf(probs, image, valid), truth)
    assert raw_iou < 0.97 and raw_f < 0.8  # the problem is a real one
    assert iou > raw_iou + 0.02 and iou > 0.99
    assert f > raw_f + 0.15 and f > 0.95


def test_crf_on_a_volume_with_anisotropic_voxels():
    truth, image, probs = problem((40, 48, 48), blur=2.0)
    valid = np.ones(truth.shape, bool)
    raw_iou, raw_f = scores(probs, truth)
    refined = dense_crf(probs, image[:1], valid, spacing=(2.0, 1.0, 1.0))
    iou, f = scores(refined, truth)
    assert iou > raw_iou + 0.05
    assert f > raw_f + 0.1
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)


def test_blockwise_crf_equals_whole_image_crf():
    """Each block refined on block + halo (the rule's halo) against one whole-image CRF.

    Positions are global, so every pixel sits on the same lattice in every window;
    what differs is only the mass of kernels cut at the window edge, 3 widths away.
    Stated tolerance: labels agree on >= 99.99 % of the pixels, probabilities within 0.02
    (measured: identical labels, 0.007; with a 2-width halo 99.995 % and 0.045).
    """
    truth, image, probs = problem((240, 272), seed=4)
    valid = np.ones(truth.shape, bool)
    params = crf_params(2, sxy=20.0, srgb=10.0, iterations=5)
    whole = dense_crf(probs, image, valid, params=params)
    halo = halo_width(params, ndim=2)
    assert halo == (60, 60)
    tiled = refine_blockwise(dense_crf, probs, image, valid, params=params, halo=halo)
    agree = (tiled.argmax(0) == whole.argmax(0)).mean()
    assert agree >= 0.9999
    assert np.abs(tiled - whole).max() < 0.02


def test_nodata_pixels_take_no_part():
    truth, image, probs = problem((96, 96), seed=2)
    valid = np.ones(truth.shape, bool)
    valid[:, :30] = False
    other = probs.copy()
    other[:, ~valid] = np.random.default_rng(0).random((K, int((~valid).sum())))
    other_image = image.copy()
    other_image[:, ~valid] = 255
    a = dense_crf(probs, image, valid)
    b = dense_crf(other, other_image, valid)
    np.testing.assert_array_equal(a, b)
    assert (a[:, ~valid] == 0).all()
    np.testing.assert_allclose(a[:, valid].sum(0), 1.0, atol=1e-4)


def test_all_nodata_window_and_uint8_zeros():
    probs = np.zeros((K, 8, 9), np.float32)
    assert (dense_crf(probs, np.zeros((3, 8, 9), np.float32), np.zeros((8, 9), bool)) == 0).all()
    probs[0] = 1.0  # quantised stores hold exact zeros: -log(0) must not break the unary
    out = dense_crf(probs, np.zeros((3, 8, 9), np.float32), np.ones((8, 9), bool))
    assert np.isfinite(out).all() and (out.argmax(0) == 0).all()


def test_superpixel_vote_follows_image_edges():
    truth, image, probs = problem((192, 224))
    valid = np.ones(truth.shape, bool)
    valid[:20] = False
    raw_iou, raw_f = scores(probs, truth, valid)
    refined = superpixel_vote(probs, image, valid, params=SuperpixelParams(size=20))
    iou, f = scores(refined, truth, valid)
    assert iou > raw_iou + 0.01
    assert f > raw_f + 0.1
    assert (refined[:, ~valid] == 0).all()
    majority = superpixel_vote(probs, image, valid, params=SuperpixelParams(size=20, vote="majority"))
    assert set(np.unique(majority[:, valid])) <= {0.0, 1.0}
    assert scores(majority, truth)[0] > raw_iou


def test_superpixels_in_3d():
    truth, image, probs = problem((40, 48, 48), blur=2.0)
    refined = superpixel_vote(
        probs, image[:1], np.ones(truth.shape, bool), params=SuperpixelParams(size=6), spacing=(2.0, 1.0, 1.0)
    )
    assert scores(refined, truth)[0] > scores(probs, truth)[0]


def test_refiner_names_and_plain_callables():
    def identity(probabilities, features, valid, **kw):
        return probabilities

    assert get_refiner("crf") is dense_crf
    assert get_refiner(identity) is identity
    with pytest.raises(InputError, match="must be one of .* or a callable"):
        get_refiner("graphcut")
    assert resolve_params(identity, {"x": 1}, 2) == {"x": 1}
    assert halo_width(None, ndim=2) == (0, 0)


def test_parameters_defaults_and_validation():
    assert crf_params(2) == CRFParams(iterations=10, sxy=121.0, srgb=5.0)  # DeepLab-LargeFOV
    assert crf_params(3).sxy == 10.0
    assert resolve_params("crf", {"sxy": 80.0, "iterations": None}, 2).sxy == 80.0
    assert resolve_params("superpixel", {"size": 40.0}, 2) == SuperpixelParams(size=40.0)
    with pytest.raises(InputError, match="positive"):
        crf_params(2, srgb=0)
    with pytest.raises(InputError, match="iterations"):
        crf_params(2, iterations=0)
    with pytest.raises(InputError, match="bad parameters"):
        resolve_params("crf", {"radius": 3}, 2)
    with pytest.raises(InputError, match="vote"):
        SuperpixelParams(vote="median")
    assert RefineOptions().method == "crf"


def test_halo_rule():
    assert halo_width(crf_params(2), ndim=2) == (363, 363)
    assert halo_width(crf_params(2, sxy=80.0), ndim=2) == (240, 240)
    # 3 mm slices, 1 mm pixels: widths count in 1 mm units, so a third as many slices
    assert halo_width(crf_params(3), ndim=3, spacing=(3.0, 1.0, 1.0)) == (10, 30, 30)
    assert halo_width(crf_params(2, sxy=1000.0), ndim=2) == (512, 512)  # capped
    assert halo_width(SuperpixelParams(size=20), ndim=2) == (60, 60)


def test_window_box_is_clipped_to_the_scene():
    assert window_box(Box((0, 10), (5, 20)), (3, 4), (8, 22)) == Box((0, 6), (8, 22))


def test_feature_bands_choice():
    assert feature_bands([1, 2, 3, 4]) == [1, 2, 3]
    assert feature_bands([5, 6]) == [5, 6]
    names = ["Blue", "green", "RED", "nir"]
    assert feature_bands([2, 3, 4, 8], band_names=names) == [4, 3, 2]
    assert feature_bands([1, 2, 3, 4], band_names=["a", "b", "c", "d"]) == [1, 2, 3]
    assert feature_bands([1, 2, 3, 4], band_names=names, explicit=[4]) == [4]


def test_stretch_maps_percentiles_to_0_and_255():
    rng = np.random.default_rng(0)
    samples = np.stack([rng.uniform(0, 10000, 10001), np.full(10001, 7.0)])
    stretch = fit_stretch(samples, (2.0, 98.0))
    assert stretch.low[0] == pytest.approx(200, rel=0.05) and stretch.high[0] == pytest.approx(9800, rel=0.01)
    out = stretch(np.array([[[stretch.low[0], stretch.high[0], 1e9, np.nan]], [[7.0, 7.0, 7.0, 7.0]]]))
    np.testing.assert_allclose(out[0, 0], [0, 255, 255, 0])
    assert np.isfinite(out).all()  # a constant band does not divide by zero
    with pytest.raises(InputError, match="percentiles"):
        fit_stretch(samples, (98.0, 2.0))


@given(shape=st.lists(st.integers(1, 700), min_size=2, max_size=3))
def test_sample_boxes_lie_inside_the_scene(shape):
    boxes = sample_boxes(tuple(shape))
    assert 1 <= len(boxes) <= 64
    for box in boxes:
        assert all(0 <= a < b <= n for a, b, n in zip(box.start, box.stop, shape, strict=True))


def test_torch_crf_snaps_edges_and_excludes_nodata():
    from gigaseg.refine.torch_crf import torch_crf, torch_crf_params

    truth, image, probs = problem((192, 224))
    valid = np.ones(truth.shape, bool)
    valid[:, :16] = False
    raw_iou, raw_f = scores(probs, truth, valid)
    params = torch_crf_params(2, sxy=40.0, srgb=10.0, window=12)
    refined = torch_crf(probs, image, valid, params=params)
    iou, f = scores(refined, truth, valid)
    assert iou > raw_iou + 0.01
    assert f > raw_f + 0.1
    assert (refined[:, ~valid] == 0).all()
    np.testing.assert_allclose(refined[:, valid].sum(0), 1.0, atol=1e-4)
    other = probs.copy()
    other[:, ~valid] = 0.5
    np.testing.assert_allclose(torch_crf(other, image, valid, params=params), refined, atol=1e-6)


def test_blockwise_torch_crf_equals_whole_image():
    """Cells are aligned to global coordinates; tolerance as for the CRF above."""
    from gigaseg.refine.torch_crf import torch_crf, torch_crf_params

    truth, image, probs = problem((160, 200), seed=4)
    valid = np.ones(truth.shape, bool)
    params = torch_crf_params(2, sxy=16.0, srgb=10.0, iterations=5, window=12)
    whole = torch_crf(probs, image, valid, params=params)
    halo = halo_width(params, ndim=2)
    tiled = refine_blockwise(torch_crf, probs, image, valid, params=params, halo=halo)
    assert (tiled.argmax(0) == whole.argmax(0)).mean() >= 0.9999
    assert np.abs(tiled - whole).max() < 0.02


def test_torch_crf_on_a_volume():
    from gigaseg.refine.torch_crf import torch_crf

    truth, image, probs = problem((40, 48, 48), blur=2.0)
    refined = torch_crf(probs, image[:1], np.ones(truth.shape, bool), spacing=(2.0, 1.0, 1.0))
    assert scores(refined, truth)[0] > scores(probs, truth)[0] + 0.02
    with pytest.raises(InputError, match="2-D images and 3-D volumes"):
        torch_crf(probs[:, 0, 0], image[:1, 0, 0], np.ones(48, bool))


REFINER_SHAPES = {2: (40, 52), 3: (12, 18, 20)}


class TestRefinerContract:
    """Every entry of :data:`gigaseg.refine.REFINERS` keeps the refiner contract of :mod:`gigaseg.refine`:
    ``(K, *shape)`` float32 probabilities, zeros on invalid pixels, which take no part."""

    @pytest.fixture(params=sorted(REFINERS))
    def method(self, request):
        return request.param

    @pytest.fixture(params=sorted(REFINER_SHAPES))
    def window(self, request):
        """Probabilities, 0-255 features, validity (a block of nodata and scattered pixels), spacing."""
        ndim = request.param
        truth, image, probs = problem(REFINER_SHAPES[ndim], seed=5, blur=2.0)
        features = np.clip(image, 0, 255).astype(np.float32)[: 3 if ndim == 2 else 1]
        valid = np.ones(truth.shape, bool)
        valid[(slice(0, 4),) * ndim] = False
        valid.flat[np.random.default_rng(1).choice(valid.size, valid.size // 20, replace=False)] = False
        spacing = (1.0, 1.0) if ndim == 2 else (2.0, 1.0, 1.0)
        return probs, features, valid, spacing

    def run(self, method, probs, features, valid, spacing, origin=None):
        params = resolve_params(method, None, valid.ndim)
        return get_refiner(method)(probs, features, valid, params=params, origin=origin, spacing=spacing)

    def test_probabilities_out_zeros_on_nodata(self, method, window):
        probs, features, valid, spacing = window
        out = self.run(method, probs, features, valid, spacing, origin=(7,) * valid.ndim)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == probs.shape
        assert np.isfinite(out).all()
        assert (out[:, ~valid] == 0).all()
        assert (out[:, valid] >= 0).all() and (out[:, valid] <= 1 + 1e-6).all()
        np.testing.assert_allclose(out[:, valid].sum(0), 1.0, atol=1e-4)
        labels = labels_from(out, valid, nodata=255, dtype=np.uint8)
        assert set(np.unique(labels[valid])) <= set(range(K)) and (labels[~valid] == 255).all()

    def test_nodata_pixels_take_no_part_whatever_they_hold(self, method, window):
        probs, features, valid, spacing = window
        before = self.run(method, probs, features, valid, spacing)
        rng = np.random.default_rng(2)
        for fill in ("random", "nan"):
            other_probs, other_features = probs.copy(), features.copy()
            if fill == "random":
                other_probs[:, ~valid] = rng.random((K, int((~valid).sum())))
                other_features[:, ~valid] = rng.uniform(0, 255, (features.shape[0], int((~valid).sum())))
            else:
                other_probs[:, ~valid] = np.nan
                other_features[:, ~valid] = np.nan
            after = self.run(method, other_probs, other_features, valid, spacing)
            np.testing.assert_allclose(after, before, atol=1e-6, err_msg=fill)

    def test_deterministic_and_inputs_left_alone(self, method, window):
        probs, features, valid, spacing = window
        copies = probs.copy(), features.copy(), valid.copy()
        first = self.run(method, probs, features, valid, spacing)
        second = self.run(method, probs, features, valid, spacing)
        np.testing.assert_array_equal(first, second)
        for original, copy in zip((probs, features, valid), copies, strict=True):
            np.testing.assert_array_equal(original, copy)

    def test_all_nodata_and_quantised_windows(self, method, window):
        probs, features, valid, spacing = window
        nothing = self.run(method, probs, features, np.zeros_like(valid), spacing)
        assert nothing.shape == probs.shape and nothing.dtype == np.float32 and (nothing == 0).all()
        hard = np.zeros_like(probs)
        hard[0] = 1.0  # a uint8 store holds exact zeros
        out = self.run(method, hard, features, valid, spacing)
        assert np.isfinite(out).all() and (out[:, valid].argmax(0) == 0).all()

    def test_mismatched_shapes_are_refused(self, method, window):
        probs, features, valid, spacing = window
        with pytest.raises(InputError, match="spatial shape"):
            self.run(method, probs, features[(slice(None), slice(1, None))], valid, spacing)

import numpy as np
import pytest

from gigaseg.errors import ModelError
from gigaseg.models import ModelCard
from gigaseg.models.intensity import Intensity, check_spec, fit_intensity, needs_sample


@pytest.fixture
def sample(rng):
    return np.stack([rng.normal(40, 300, 5000), rng.normal(-5, 2, 5000)]).astype(np.float32)


def test_ct_window_clips_then_z_scores_with_the_given_moments():
    spec = {"mode": "ct", "window": [-160, 240], "mean": 40, "std": 100}
    assert not needs_sample(spec)
    norm = fit_intensity(spec, None, channels=1)
    tiles = np.array([-1000, -160, 40, 240, 3000], np.float32).reshape(1, 1, 5)
    assert np.array_equal(norm(tiles)[0, 0], [-2, -2, 0, 2, 2])


def test_ct_window_without_moments_measures_them_inside_the_window(sample):
    spec = {"mode": "ct", "window": [-160, 240]}
    assert needs_sample(spec)
    norm = fit_intensity(spec, sample[:1], channels=1)
    clipped = np.clip(sample[0].astype(np.float64), -160, 240)
    assert norm.mean[0] == pytest.approx(clipped.mean()) and norm.std[0] == pytest.approx(clipped.std())


def test_percentiles_and_moments_per_channel(sample):
    norm = fit_intensity({"mode": "percentile", "low": 5, "high": 95}, sample, channels=2)
    np.testing.assert_allclose(norm.low, np.percentile(sample, 5, axis=1))
    np.testing.assert_allclose(norm.high, np.percentile(sample, 95, axis=1))
    clipped = np.clip(sample.astype(np.float64), norm.low[:, None], norm.high[:, None])
    np.testing.assert_allclose(norm.mean, clipped.mean(axis=1))
    out = norm(sample[None, :, :].copy())
    np.testing.assert_allclose(out.mean(axis=2)[0], [0, 0], atol=1e-4)


def test_card_moments_win_over_measured_ones_and_context_repeats_channels(sample):
    norm = fit_intensity({"mode": "zscore"}, sample[:1], channels=3, mean=[1, 2, 3], std=[4, 5, 6])
    assert list(norm.mean) == [1, 2, 3] and norm.low is None
    repeated = fit_intensity({"mode": "zscore"}, sample, channels=6)
    assert repeated.mean[0] == repeated.mean[2] != repeated.mean[3] == repeated.mean[5]
    with pytest.raises(ModelError, match="do not fit a model with 3 channels"):
        fit_intensity({"mode": "zscore"}, sample, channels=3)


def test_a_constant_or_empty_scene():
    flat = fit_intensity({"mode": "zscore"}, np.full((1, 10), 7.0, np.float32), channels=1)
    assert flat.std[0] == 1.0
    with pytest.raises(ModelError, match="no valid pixels"):
        fit_intensity({"mode": "percentile"}, np.zeros((1, 0), np.float32), channels=1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"window": [0, 1]}, "needs a mode"),
        ({"mode": "mri"}, "needs a mode"),
        ({"mode": "ct"}, "needs a window"),
        ({"mode": "ct", "window": [5, 1]}, "needs a window"),
        ({"mode": "percentile", "low": 50, "high": 40}, "0 <= low < high <= 100"),
        ({"mode": "zscore", "window": [0, 1]}, "takes no \\['window'\\]"),
        ({"mode": "zscore", "std": 0}, "std must be positive"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ModelError, match=message):
        check_spec(spec)
    with pytest.raises(ModelError, match=message):
        ModelCard(arch="conv3d", in_channels=1, classes=["a"], spatial_dims=3, intensity=spec)


def test_describe_round_trips():
    norm = Intensity(np.array([1.0]), np.array([2.0]), np.array([-1.0]), np.array([3.0]))
    assert Intensity(**{k: np.array(v) for k, v in norm.describe().items()}).describe() == norm.describe()


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalising_torch_tensors_gives_numpys_bits(channels_last):
    import torch

    norm = Intensity(np.array([70.0, 71.0, 72.5]), np.array([30.0, 31.0, 0.3]), np.full(3, 10.0), np.full(3, 200.0))
    raw = np.random.default_rng(0).integers(0, 255, (4, 3, 16, 24)).astype(np.float32)
    x = torch.from_numpy(raw.copy())
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert norm(x) is x
    assert np.array_equal(x.numpy(), norm(raw.copy()))
    volume = np.random.default_rng(1).normal(size=(2, 3, 5, 6, 7)).astype(np.float32) * 100
    assert np.array_equal(norm(torch.from_numpy(volume.copy())).numpy(), norm(volume.copy()))


def test_a_cards_plain_normaliser_is_an_intensity_with_the_cards_values():
    card = ModelCard(arch="conv", in_channels=2, classes=["a"], clip=[-5.0, 5.0], mean=[1.0, 2.0], std=[2.0, 4.0])
    described = card.normalizer().describe()
    assert described == {"mean": [1.0, 2.0], "std": [2.0, 4.0], "low": [-5.0, -5.0], "high": [5.0, 5.0]}

"""Training: random tiles through sources, losses, validation metrics, checkpoints, resume."""

import time

import numpy as np
import pytest
import torch

from gigaseg.errors import InputError, ModelError, OutputExistsError
from gigaseg.io.array import ArraySource
from gigaseg.io.generate import write_landcover_tiff
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.models import ModelCard, load_checkpoint
from gigaseg.models.checkpoint import read_checkpoint
from gigaseg.models.training import (
    IGNORE,
    Pair,
    Region,
    TrainConfig,
    augment,
    choose_box,
    class_weights,
    confusion,
    dice_loss,
    last_path,
    sample_box,
    scores,
    train,
)
from gigaseg.synthetic import landcover_scene, organ_volume
from gigaseg.tiler import Box

# Water and land: a per-pixel (1x1 conv) model can learn it from the spectra in seconds.
SPECTRAL = ["water", "land"]


def spectral_pair(seed: int, shape=(160, 160)) -> Pair:
    image, labels = landcover_scene(shape, seed=seed)
    return Pair(ArraySource(image, spatial_dims=2), ArraySource(np.minimum(labels, 1), spatial_dims=2))


def quick_config(**kw) -> TrainConfig:
    values = {
        "classes": SPECTRAL,
        "arch": "conv",
        "encoder": None,
        "tile": 64,
        "batch_size": 4,
        "epochs": 3,
        "steps": 15,
        "val_tiles": 6,
        "lr": 0.05,
        "device": "cpu",
        **kw,
    }
    return TrainConfig(**values)


def test_training_drives_validation_dice_above_0_9_within_seconds(tmp_path):
    started = time.perf_counter()
    lines = []
    result = train([spectral_pair(14)], tmp_path / "m.pt", quick_config(), log=lines.append)
    assert time.perf_counter() - started < 60  # ~5 s on an idle 2-core machine
    assert result.card.metrics["val_mean_dice"] > 0.9, lines
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3: loss ")
    assert set(result.card.metrics["val_dice"]) == set(SPECTRAL)
    # the best checkpoint is the best epoch's weights, with the card saying so
    best = max(result.history, key=lambda h: h["val_mean_dice"])
    assert result.card.metrics["epoch"] == best["epoch"]
    model, card = load_checkpoint(tmp_path / "m.pt")
    assert card.metrics == result.card.metrics and card.receptive_field == 1
    assert card.training["val_split"].startswith("last 20%")
    assert card.mean is not None and len(card.std) == 4


def test_3d_training_on_array_sources(tmp_path):
    pairs = []
    for seed in (1, 2):
        volume, _ = organ_volume((24, 40, 40), seed=seed)
        body = (volume > -500).astype(np.uint8)  # air / body: a quick 3-D task
        pairs.append(Pair(ArraySource(volume, spatial_dims=3), ArraySource(body, spatial_dims=3)))
    config = quick_config(
        classes=["air", "body"],
        arch="aspp3d",
        arch_kwargs={"channels": [4, 8], "rates": [1, 2]},
        tile=16,
        overlap=4,
        batch_size=2,
        epochs=2,
        steps=12,
        val_tiles=4,
        lr=0.02,
    )
    result = train(pairs[:1], tmp_path / "v.pt", config, val_pairs=pairs[1:], log=lambda _: None)
    assert result.card.spatial_dims == 3
    assert result.card.metrics["val_mean_dice"] > 0.9
    assert result.card.training["val_split"] == "separate pairs"


def test_geotiff_sources_with_nodata_borders(tmp_path):
    image = write_landcover_tiff(tmp_path / "s.tif", (160, 128), seed=5, border=8, labels_path=tmp_path / "l.tif")
    labels = GeoTiffSource(tmp_path / "l.tif")
    pair = Pair(GeoTiffSource(image), labels)
    config = quick_config(classes=["water", "vegetation", "built-up", "bare"], epochs=1, steps=3)
    result = train([pair], tmp_path / "m.pt", config, log=lambda _: None)
    counted = sum(result.card.metrics["val_pixels"].values())
    assert 0 < counted < 6 * 64 * 64  # the nodata border is not scored
    assert result.card.band_names == ["band1", "band2", "band3", "band4"]


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    pair = spectral_pair(12, shape=(128, 128))
    config = quick_config(steps=4)
    whole = train([pair], tmp_path / "whole.pt", config, log=lambda _: None)

    def interrupt_in_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train([pair], tmp_path / "part.pt", config, log=interrupt_in_epoch_2)
    lines = []
    resumed = train([pair], tmp_path / "part.pt", config, resume=True, log=lines.append)
    assert lines[0] == f"resuming {tmp_path / 'part.pt'} after epoch 1"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    a = read_checkpoint(last_path(tmp_path / "whole.pt"))["state_dict"]
    b = read_checkpoint(last_path(tmp_path / "part.pt"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_network(tmp_path):
    pair = spectral_pair(13, shape=(96, 96))
    train([pair], tmp_path / "m.pt", quick_config(epochs=1, steps=1), log=lambda _: None)
    with pytest.raises(InputError, match="cannot resume .* trains conv"):
        train([pair], tmp_path / "m.pt", quick_config(arch="fcn"), resume=True, log=lambda _: None)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train([pair], tmp_path / "m.pt", quick_config(epochs=1, steps=1), log=lambda _: None)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            [
                Pair(
                    ArraySource(np.zeros((2, 50, 50)), spatial_dims=2),
                    ArraySource(np.zeros((50, 40)), spatial_dims=2),
                )
            ],
            "have shape (50, 40)",
        ),
        (
            [
                Pair(
                    ArraySource(np.zeros((2, 50, 50)), spatial_dims=2),
                    ArraySource(np.zeros((2, 50, 50)), spatial_dims=2),
                )
            ],
            "must have one band",
        ),
        (
            [
                Pair(
                    ArraySource(np.zeros((2, 1, 50)), spatial_dims=2),
                    ArraySource(np.zeros((1, 50)), spatial_dims=2),
                )
            ],
            "too few to hold some out",
        ),
        (
            [
                Pair(
                    ArraySource(np.zeros((2, 50, 50)), spatial_dims=2),
                    ArraySource(np.full((50, 50), 7), spatial_dims=2),
                )
            ],
            "hold value 7",
        ),
    ],
)
def test_bad_training_data_is_one_clear_error(tmp_path, pairs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(pairs, tmp_path / "m.pt", quick_config(epochs=1, steps=1), log=lambda _: None)


def test_tiles_stay_inside_their_region_and_shrink_to_small_regions():
    rng = np.random.default_rng(0)
    region = Region(0, Box((100, 0), (140, 300)))
    for _ in range(50):
        box = sample_box(region, 64, rng)
        assert box.shape == (40, 64)
        assert region.box.intersection(box) == box


def test_augment_moves_labels_with_pixels():
    rng = np.random.default_rng(3)
    labels = np.arange(16).reshape(4, 4)
    image = np.stack([labels, labels * 2]).astype(np.float32)
    for _ in range(10):
        flipped_image, flipped = augment(image, labels, rng)
        np.testing.assert_array_equal(flipped_image[0], flipped)
        np.testing.assert_array_equal(flipped_image[1], flipped * 2)
        assert sorted(flipped.ravel()) == list(range(16))


def test_dice_loss_and_scores():
    labels = torch.tensor([[[0, 1], [1, IGNORE]]])
    perfect = torch.tensor([[[[9.0, -9.0], [-9.0, 0.0]], [[-9.0, 9.0], [9.0, 0.0]]]])
    assert float(dice_loss(perfect, labels)) < 1e-3
    assert float(dice_loss(-perfect, labels)) > 0.6
    matrix = confusion(np.array([[0, 1], [0, 2]]), np.array([[0, 1], [1, IGNORE]]), 3)
    result = scores(matrix, ["a", "b", "c"])
    assert result["val_dice"] == {
        "a": pytest.approx(2 / 3, abs=1e-4),
        "b": pytest.approx(2 / 3, abs=1e-4),
        "c": None,
    }
    assert result["val_pixel_accuracy"] == pytest.approx(2 / 3, abs=1e-4)


def test_candidates_oversample_tiles_with_rare_classes():
    labels = np.zeros((100, 100), np.uint8)
    labels[80:90, 80:90] = 1
    pair = Pair(ArraySource(np.zeros((1, 100, 100)), spatial_dims=2), ArraySource(labels, spatial_dims=2))
    regions = [Region(0, Box((0, 0), (100, 100)))]
    rng = np.random.default_rng(0)
    weights = class_weights([pair], regions, quick_config(classes=["a", "b"], tile=20), rng, tiles=200)
    assert weights[1] == 1 and weights[0] < 0.1

    def hits(candidates: int) -> int:
        config = quick_config(classes=["a", "b"], tile=20, candidates=candidates)
        boxes = [choose_box([pair], regions, config, weights, rng)[1] for _ in range(100)]
        return sum(bool(labels[box.slices()].any()) for box in boxes)

    assert hits(8) > 3 * max(hits(1), 1)


def test_clip_windows_intensities_before_normalising():
    card = ModelCard(arch="conv", in_channels=1, classes=["a"], clip=[-100.0, 100.0], mean=[0.0], std=[100.0])
    tiles = np.array([[[-1000.0, 50.0, 700.0]]], np.float32)[None]
    np.testing.assert_allclose(card.normalize(tiles)[0, 0, 0], [-1.0, 0.5, 1.0])
    with pytest.raises(ModelError, match="clip must be"):
        ModelCard(arch="conv", in_channels=1, classes=["a"], clip=[5.0, 1.0])

"""Training: random tiles through sources, losses, validation metrics, checkpoints, resume."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from gigaseg.errors import InputError, ModelError, OutputExistsError
from gigaseg.io.array import ArraySource
from gigaseg.io.generate import write_landcover_tiff
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.models import ModelCard, load_checkpoint
from gigaseg.models.checkpoint import read_checkpoint
from gigaseg.models.metrics import confusion_matrix
from gigaseg.models.training import (
    IGNORE,
    Pair,
    Region,
    Sampler,
    Split,
    TrainConfig,
    augment,
    census,
    choose_box,
    choose_validation,
    dice_loss,
    inverse_frequency,
    last_path,
    loss_weights,
    split_regions,
    tile_around,
    tile_over,
    to_classes,
    train,
    validation_scores,
)
from gigaseg.synthetic import CLASSES, landcover_scene, organ_volume
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
    assert len(lines) == 4 and lines[0].startswith("split (blocks): 13 training blocks")
    assert lines[1].startswith("epoch 1/3: loss ")
    assert set(result.card.metrics["val_dice"]) == set(SPECTRAL)
    # the figures of gigaseg evaluate, each epoch
    for record in result.history:
        assert 0 <= record["val_pixel_accuracy"] <= 1 and -1 <= record["val_kappa"] <= 1
        assert set(record["val_precision"]) == set(record["val_recall"]) == set(SPECTRAL)
        assert sum(map(sum, record["val_confusion_matrix"])) == sum(record["val_pixels"].values())
    # the best checkpoint is the best epoch's weights, with the card saying so
    best = max(result.history, key=lambda h: h["val_mean_dice"])
    assert result.card.metrics["epoch"] == best["epoch"]
    assert result.card.metrics["val_kappa"] == best["val_kappa"] and "kappa" in lines[-1]
    model, card = load_checkpoint(tmp_path / "m.pt")
    assert card.metrics == result.card.metrics and card.receptive_field == 1
    assert card.training["val_split"] == "random blocks holding 20% of the labelled pixels"
    split = card.training["split"]
    assert split["how"] == "blocks" and split["blocks"] == {"train": 13, "val": 3}  # 4 x 4 blocks of 40 px
    held = sum(split["labelled"]["val"].values()) / (160 * 160)
    assert 0.15 < held < 0.25 and card.training["sampling"] == "uniform"
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
    assert result.card.band_names == ["blue", "green", "red", "nir"]  # as the generated scene names them


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
    with pytest.raises(OutputExistsError, match="use overwrite to replace it or resume"):
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
                    ArraySource(np.zeros((2, 50, 50)), spatial_dims=2),
                    ArraySource(np.full((50, 50), 255, np.uint8), spatial_dims=2, nodata=255),
                )
            ],
            "the scenes' 0 labelled pixels lie in 0 block(s) of 13 px",
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


def test_tiles_hold_their_point_inside_the_scene_and_shrink_to_small_scenes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        point = (int(rng.integers(0, 40)), int(rng.integers(0, 300)))
        box = tile_around(point, (40, 300), 64, rng)
        assert box.shape == (40, 64)
        assert Box((0, 0), (40, 300)).intersection(box) == box
        assert all(a <= p < b for p, a, b in zip(point, box.start, box.stop, strict=True))
    assert tile_over(Box((0, 280), (20, 300)), (40, 300), 64) == Box((0, 236), (40, 300))


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
    labels = np.array([[0, 1], [1, IGNORE]])
    matrix = confusion_matrix(labels, np.array([[0, 1], [0, 2]]), 3, valid=labels != IGNORE)
    result = validation_scores(matrix, ["a", "b", "c"])
    assert result["val_dice"] == {
        "a": pytest.approx(2 / 3, abs=1e-4),
        "b": pytest.approx(2 / 3, abs=1e-4),
        "c": None,
    }
    assert result["val_precision"] == {"a": 0.5, "b": 1.0, "c": None}
    assert result["val_recall"] == {"a": 1.0, "b": 0.5, "c": None}
    assert result["val_pixel_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    # kappa of [[1, 0], [1, 1]]: chance agreement (1 x 2 + 2 x 1) / 3^2 = 4/9, so (2/3 - 4/9) / (5/9) = 0.4
    assert result["val_kappa"] == pytest.approx(0.4, abs=1e-4)
    assert result["val_confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_candidates_oversample_tiles_with_rare_classes():
    labels = np.zeros((100, 100), np.uint8)
    labels[80:90, 80:90] = 1
    pair = Pair(ArraySource(np.zeros((1, 100, 100)), spatial_dims=2), ArraySource(labels, spatial_dims=2))
    config = quick_config(classes=["a", "b"], tile=20, sampling="uniform")
    blocks = census([pair], config)
    weights = inverse_frequency(np.array([r.counts for r in blocks]).sum(0))
    assert weights[1] == 1 and weights[0] == pytest.approx(100 / 9900)
    rng = np.random.default_rng(0)

    def hits(candidates: int) -> int:
        sampler = Sampler([pair], Split(blocks, [], "blocks"), replace(config, candidates=candidates))
        boxes = [choose_box(sampler, weights, rng)[1] for _ in range(100)]
        return sum(bool(labels[box.slices()].any()) for box in boxes)

    assert hits(8) > 3 * max(hits(1), 1)


def test_clip_windows_intensities_before_normalising():
    card = ModelCard(arch="conv", in_channels=1, classes=["a"], clip=[-100.0, 100.0], mean=[0.0], std=[100.0])
    tiles = np.array([[[-1000.0, 50.0, 700.0]]], np.float32)[None]
    np.testing.assert_allclose(card.normalize_tiles(tiles)[0, 0, 0], [-1.0, 0.5, 1.0])
    with pytest.raises(ModelError, match="clip must be"):
        ModelCard(arch="conv", in_channels=1, classes=["a"], clip=[5.0, 1.0])


def sparse_pair(seed: int, shape=(160, 160), *, rows: int = 110, patches: int = 40) -> tuple[Pair, np.ndarray]:
    """A land-cover scene labelled 1..4 in 3x3 survey patches of its top ``rows`` only (0: unlabelled)."""
    image, truth = landcover_scene(shape, seed=seed)
    labels = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(patches):
        y, x = int(rng.integers(0, rows - 3)), int(rng.integers(0, shape[1] - 3))
        labels[y : y + 3, x : x + 3] = truth[y : y + 3, x : x + 3] + 1
    return Pair(ArraySource(image, spatial_dims=2), ArraySource(labels, spatial_dims=2)), labels


def test_sparse_labels_get_a_labelled_validation_and_the_card_records_the_split(tmp_path):
    pair, labels = sparse_pair(21)
    assert not labels[128:].any()  # the old split, the last 20% of the rows, held no labelled pixel
    assert (labels > 0).mean() < 0.015
    config = quick_config(classes=list(CLASSES), label_offset=1, epochs=2, steps=6)
    lines = []
    result = train([pair], tmp_path / "m.pt", config, log=lines.append)
    split = result.card.training["split"]
    held = sum(split["labelled"]["val"].values())
    assert held > 0 and sum(split["labelled"]["train"].values()) + held == (labels > 0).sum()
    assert 0.1 < held / (labels > 0).sum() < 0.3
    # every labelled pixel of the (few) validation blocks is scored, once
    assert split["blocks"]["val"] <= config.val_tiles
    assert sum(result.card.metrics["val_pixels"].values()) == held
    assert all(h["val_mean_dice"] > 0 for h in result.history)
    assert result.card.training["sampling"] == "balanced" and result.card.training["labels"]["offset"] == 1
    assert lines[0].startswith("split (blocks): 13 training blocks") and "sampling balanced" in lines[0]
    for _, start, stop in split["val_blocks"]:
        assert labels[Box(tuple(start), tuple(stop)).slices()].any() or held == 0


def test_training_tiles_ignore_validation_blocks_and_balance_classes():
    labels = np.full((120, 120), 255, np.uint8)
    labels[::4, ::4] = 0  # 900 labelled pixels of class 0
    labels[100:103, 100:103] = labels[20:23, 60:63] = 1  # 18 of class 1, in two blocks
    pair = Pair(ArraySource(np.zeros((1, 120, 120)), spatial_dims=2), ArraySource(labels, spatial_dims=2, nodata=255))
    config = quick_config(classes=["a", "b"], tile=16)
    split = split_regions([pair], None, config)
    held = np.zeros(labels.shape, bool)
    for region in split.val:
        held[region.box.slices()] = True
    assert held.any() and (labels[held] != 255).any() and (labels[~held] == 1).any()
    rng = np.random.default_rng(1)
    found = {}
    for mode in ("labelled", "balanced"):
        sampler = Sampler([pair], split, replace(config, sampling=mode))
        rare = 0
        for _ in range(200):
            index, box = sampler.box(rng)
            _, _, target = sampler.read(index, box)
            assert (target[: box.shape[0], : box.shape[1]][held[box.slices()]] == IGNORE).all()
            assert (target != IGNORE).any()
            rare += bool((target == 1).any())
        found[mode] = rare
    assert found["balanced"] > 70 and found["labelled"] < 20, found


def test_choose_validation_holds_about_the_share_never_everything():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        counts = rng.integers(0, 50, size=int(rng.integers(2, 40)))
        counts[0] = 1
        blocks = [Region(0, Box((i, 0), (i + 1, 1)), (int(c),)) for i, c in enumerate(counts)]
        held = choose_validation(blocks, 0.2, np.random.default_rng(seed))
        assert held == choose_validation(blocks, 0.2, np.random.default_rng(seed))
        labelled = {i for i, c in enumerate(counts) if c}
        assert held and held < labelled and all(counts[i] for i in held)
        share = sum(counts[i] for i in held) / counts.sum()
        assert share <= 0.2 + counts.max() / 2 / counts.sum()


def test_labels_in_one_block_are_one_clear_error(tmp_path):
    labels = np.full((96, 96), 255, np.uint8)
    labels[5:8, 5:8] = 1
    pair = Pair(ArraySource(np.zeros((2, 96, 96)), spatial_dims=2), ArraySource(labels, spatial_dims=2, nodata=255))
    message = r"validation holds no labelled pixel: the scenes' 9 labelled pixels lie in 1 block\(s\) of 24 px"
    with pytest.raises(InputError, match=message + ".*give val_images and val_labels or a smaller val_block"):
        train([pair], tmp_path / "m.pt", quick_config(), log=lambda _: None)
    blocks = census([pair], quick_config(val_block=2))
    assert sum(r.labelled for r in blocks) == 9 and sum(bool(r.labelled) for r in blocks) == 4


def test_label_offset_ignore_index_and_class_weights():
    config = quick_config(classes=["a", "b", "c"], label_offset=1, ignore_index=9)
    values = np.array([0, 1, 2, 3, 9, 3], np.float32)
    labelled = np.array([True, True, True, True, True, False])
    np.testing.assert_array_equal(to_classes(values, labelled, config, where=""), [IGNORE, 0, 1, 2, IGNORE, IGNORE])
    with pytest.raises(InputError, match="hold value 4, which is no class index 1..3"):
        to_classes(np.array([4.0]), np.array([True]), config, where="")
    counts = np.array([300.0, 100.0, 0.0])
    assert loss_weights(config, counts) is None
    np.testing.assert_allclose(loss_weights(replace(config, class_weights="balanced"), counts), [400 / 600, 2, 1])
    np.testing.assert_allclose(loss_weights(replace(config, class_weights=[1, 2, 3]), counts), [1, 2, 3])
    with pytest.raises(InputError, match="2 class weights for 3 classes"):
        train([spectral_pair(1, (32, 32))], "/nonexistent/m.pt", replace(config, class_weights=[1.0, 2.0]))

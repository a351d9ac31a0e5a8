"""The models shipped in the package segment fresh generated data, not noise."""

import numpy as np
import pytest
import rasterio
import zarr

from gigaseg import SegmentOptions, segment
from gigaseg.io.generate import write_landcover_tiff
from gigaseg.jobs.demo import BUNDLED_2D, bundled_model
from gigaseg.models import Predictor, load_checkpoint
from gigaseg.synthetic import CLASSES, COLORS, organ_volume

MAX_BYTES = 2_000_000


def test_landcover_model_card_describes_it():
    path = bundled_model(BUNDLED_2D)
    assert path is not None and path.stat().st_size < MAX_BYTES
    _, card = load_checkpoint(path)
    assert card.in_channels == 4 and card.band_names == ["blue", "green", "red", "nir"]
    assert card.classes == list(CLASSES) and card.colors == list(COLORS)
    assert card.tile in (256, 512) and card.overlap in (32, 64)
    assert card.receptive_field and card.receptive_field > 30
    assert card.metrics["val_mean_dice"] >= 0.9
    assert all(card.metrics["val_dice"][name] >= 0.85 for name in CLASSES)
    assert card.training["val_split"] == "separate pairs"


def test_landcover_model_segments_a_scene_it_never_saw(tmp_path):
    scene = write_landcover_tiff(
        tmp_path / "s.tif", (512, 512), seed=4242, border=4, labels_path=tmp_path / "truth.tif"
    )
    summary = segment(scene, bundled_model(BUNDLED_2D), tmp_path / "o.zarr", SegmentOptions(device="cpu"))
    mask = zarr.open_group(tmp_path / "o.zarr", mode="r")["mask"][:]
    with rasterio.open(tmp_path / "truth.tif") as truth_file:
        truth = truth_file.read(1)
    labelled = truth != 255
    assert (mask[~labelled] == 255).all()
    accuracy = (mask[labelled] == truth[labelled]).mean()
    assert accuracy >= 0.9, accuracy
    assert all(summary.counts[name] > 0 for name in CLASSES)


@pytest.fixture(scope="module")
def organs():
    path = bundled_model("organs3d.pt")
    assert path is not None and path.stat().st_size < MAX_BYTES
    return load_checkpoint(path)


def test_organ_model_segments_a_volume_it_never_saw(organs):
    model, card = organs
    assert card.spatial_dims == 3 and card.in_channels == 1
    volume, truth = organ_volume((80, 80, 80), seed=999)  # the training size
    tiles = card.normalize_tiles(volume[None, None].copy())
    mask = Predictor(model, card, device="cpu", batch_size=1)(tiles)[0].argmax(axis=0)
    for organ in (1, 2, 3):
        dice = 2 * ((mask == organ) & (truth == organ)).sum() / ((mask == organ).sum() + (truth == organ).sum())
        assert dice >= 0.8, (card.classes[organ], dice)
    assert card.metrics["val_mean_dice"] >= 0.9


def test_bundled_weights_are_stored_as_float16():
    from gigaseg.models.checkpoint import read_checkpoint

    for name in (BUNDLED_2D, "organs3d.pt"):
        state = read_checkpoint(bundled_model(name))["state_dict"]
        assert {str(v.dtype) for v in state.values() if v.is_floating_point()} == {"torch.float16"}
        assert np.isfinite([float(v.float().abs().max()) for v in state.values() if v.numel()]).all()

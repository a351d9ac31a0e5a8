import numpy as np
import pytest
import torch

from gigaseg.errors import InputError, ModelError, SourceError
from gigaseg.models import ModelCard, Predictor, create_model, load_checkpoint, save_checkpoint
from gigaseg.models.checkpoint import init_checkpoint


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    card = ModelCard(
        arch="unet",
        encoder="resnet18",
        in_channels=4,
        classes=["w", "v"],
        arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
    )
    torch.manual_seed(0)
    model = create_model(card).eval()
    save_checkpoint(tmp_path / "m.pt", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "m.pt")
    assert loaded_card == card
    x = torch.randn(1, 4, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_same_seed_gives_the_same_untrained_weights(tmp_path):
    for name in ("a.pt", "b.pt"):
        init_checkpoint(tmp_path / name, arch="conv", in_channels=3, classes=["x", "y"], seed=9)
    a, _ = load_checkpoint(tmp_path / "a.pt")
    b, _ = load_checkpoint(tmp_path / "b.pt")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_plain_state_dict_needs_a_card(tmp_path):
    card = ModelCard(arch="conv", in_channels=3, classes=["x", "y"])
    torch.save(create_model(card).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="without a ModelCard; give one with card"):
        load_checkpoint(tmp_path / "plain.pt")
    model, _ = load_checkpoint(tmp_path / "plain.pt", card=card)
    assert model.conv.in_channels == 3


def test_weights_that_disagree_with_the_card_are_refused(tmp_path):
    card = ModelCard(arch="conv", in_channels=3, classes=["x", "y"])
    torch.save(create_model(card).state_dict(), tmp_path / "plain.pt")
    wrong = ModelCard(arch="conv", in_channels=5, classes=["x", "y"])
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(tmp_path / "plain.pt", card=wrong)
    other = ModelCard(arch="unet", in_channels=3, classes=["x", "y"])
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(tmp_path / "plain.pt", card=other)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(SourceError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mean": [0.0]}, "mean has 1 values"),
        ({"std": [1, 0, 1]}, "std must be positive"),
        ({"colour": "red"}, "unknown keys"),
    ],
)
def test_invalid_cards_are_refused(fields, message):
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict({"arch": "conv", "in_channels": 3, "classes": ["a"], **fields})


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ModelError, match="available: .*unet"):
        create_model(ModelCard(arch="resnet", in_channels=3, classes=["a"]))


def test_predictor_gives_probabilities_and_checks_the_tile():
    card = ModelCard(arch="unet", encoder="resnet18", in_channels=3, classes=["a", "b", "c"])
    predictor = Predictor(create_model(card), card, device="cpu", batch_size=2)
    scores = predictor(np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32))
    assert scores.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(InputError, match="not a multiple of 32.*set tile to 512"):
        predictor.check_tile((500, 500))


def test_conv3d_is_a_3d_model_with_the_receptive_field_its_card_gives():
    card = ModelCard(
        arch="conv3d",
        in_channels=2,
        classes=["a", "b", "c"],
        spatial_dims=3,
        arch_kwargs={"kernel_size": 3, "layers": 2},
    )
    model = create_model(card).eval()
    x = torch.zeros(1, 2, 9, 9, 9)
    x[0, :, 4, 4, 4] = 1.0
    with torch.inference_mode():
        reach = (model(x) - model(torch.zeros_like(x))).abs().sum(1)[0] > 0
    assert reach.nonzero().min().item() == 2 and reach.nonzero().max().item() == 6  # 2 voxels each side
    with pytest.raises(ModelError, match="is a 3-D network but the model card says spatial_dims 2"):
        create_model(ModelCard(arch="conv3d", in_channels=2, classes=["a"]))


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 6, 8, 3), (1, 1, 4, 4), (3, 2)])
def test_normalisation_is_the_same_for_planar_and_interleaved_tiles(shape):
    rng = np.random.default_rng(0)
    card = ModelCard(
        arch="conv",
        in_channels=shape[1],
        classes=["x", "y"],
        mean=list(rng.random(shape[1]) * 50),
        std=list(rng.random(shape[1]) * 9 + 1),
    )
    tiles = (rng.random(shape) * 255).astype(np.float32)
    spatial = (1, -1) + (1,) * (len(shape) - 2)
    mean, std = (np.asarray(v, np.float32).reshape(spatial) for v in (card.mean, card.std))
    expected = (tiles - mean) / std
    interleaved = np.moveaxis(np.ascontiguousarray(np.moveaxis(tiles, 1, -1)), -1, 1)
    for x in (tiles.copy(), interleaved):
        assert np.array_equal(card.normalize_tiles(x), expected)

"""Every registered architecture: builds, runs on odd sizes, round-trips bit-exactly."""

import json

import numpy as np
import pytest
import torch

from gigaseg.errors import ModelError
from gigaseg.models import MODELS, ModelCard, Predictor, create_model, load_checkpoint, save_checkpoint
from gigaseg.models.inference import flip_axes
from gigaseg.models.receptive import receptive_field
from gigaseg.models.registry import SPATIAL_DIMS, describe_models, output_stride
from gigaseg.tiler.pad import pad_to

# Small variants, so the whole file runs in seconds; a new architecture needs an entry.
SMALL = {
    "conv": (None, {"kernel_size": 3}),
    "fcn": ("tu-test_resnet", {"encoder_output_stride": 16}),
    "unet": ("tu-test_resnet", {"decoder_channels": [16, 8, 8, 8, 8]}),
    "unetplusplus": ("tu-test_resnet", {"decoder_channels": [16, 8, 8, 8, 8]}),
    "fpn": ("tu-test_resnet", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}),
    "pspnet": ("tu-test_resnet", {"psp_out_channels": 16}),
    "deeplabv3": ("tu-test_resnet", {"decoder_channels": 16}),
    "deeplabv3plus": ("tu-test_resnet", {"decoder_channels": 16}),
    "linknet": ("tu-test_resnet", {}),
    "manet": ("tu-test_resnet", {"decoder_channels": [16, 8, 8, 8, 8], "decoder_pab_channels": 8}),
    "pan": ("tu-test_resnet", {"decoder_channels": 8}),
    "upernet": ("tu-test_resnet", {"decoder_channels": 16}),
    "unet3d": (None, {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}),
    "aspp3d": (None, {"channels": [4, 8, 16], "rates": [1, 2, 3]}),
    "conv3d": (None, {"kernel_size": 3, "layers": 2}),
}
# Odd sides; PAN's pyramid pools its 1/32 map three more times, so it needs 256 pixels.
ODD_SHAPES = {2: (37, 53), 3: (11, 17, 9)}
LARGER = {"pan": (257, 225)}


def small_card(arch: str, in_channels: int = 2) -> ModelCard:
    encoder, kwargs = SMALL[arch]
    return ModelCard(
        arch=arch,
        encoder=encoder,
        arch_kwargs=kwargs,
        in_channels=in_channels,
        classes=["a", "b", "c"],
        spatial_dims=SPATIAL_DIMS[arch],
        tile=32,
        overlap=8,
    )


def test_every_architecture_has_a_small_test_variant():
    assert sorted(SMALL) == sorted(MODELS)
    assert {"fcn", "unet", "deeplabv3", "deeplabv3plus", "unet3d", "aspp3d"} <= set(MODELS)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_builds_runs_on_odd_sizes_and_round_trips_bit_exactly(arch, tmp_path):
    card = small_card(arch)
    torch.manual_seed(0)
    model = create_model(card).eval()
    shape = LARGER.get(arch, ODD_SHAPES[card.spatial_dims])
    tiles = np.random.default_rng(0).standard_normal((3, 2, *shape), dtype=np.float32)

    save_checkpoint(tmp_path / "m.pt", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "m.pt")
    assert loaded_card == card
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    stride = output_stride(loaded)
    x = pad_to(torch.from_numpy(tiles[:1]), tuple(-(-n // stride) * stride for n in shape))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))

    scores = Predictor(model, card, device="cpu", batch_size=2)(tiles)
    assert scores.shape == (3, 3, *shape)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_fcn_and_aspp3d_take_any_size_directly():
    for arch, shape in (("fcn", (1, 2, 45, 61)), ("aspp3d", (1, 2, 13, 7, 10))):
        model = create_model(small_card(arch)).eval()
        with torch.inference_mode():
            assert model(torch.randn(shape)).shape == (shape[0], 3, *shape[2:])


def test_fcn_is_an_encoder_a_1x1_classifier_and_upsampling():
    model = create_model(small_card("fcn"))
    assert model.classifier.kernel_size == (1, 1)
    assert model.encoder.output_stride == 16


def test_spatial_dims_must_fit_the_architecture():
    with pytest.raises(ModelError, match="unet3d is a 3-D network but the model card says spatial_dims 2"):
        create_model(ModelCard(arch="unet3d", in_channels=1, classes=["a", "b"]))
    with pytest.raises(ModelError, match="spatial_dims must be 2 or 3"):
        ModelCard(arch="unet", in_channels=1, classes=["a"], spatial_dims=4)


def test_bad_architecture_arguments_are_one_clear_error():
    card = ModelCard(arch="fcn", in_channels=3, classes=["a"], arch_kwargs={"depth": 3})
    with pytest.raises(ModelError, match=r"cannot build fcn.*unexpected arch_kwargs \['depth'\]"):
        create_model(card)


def test_tta_averages_every_flip_in_probability_space():
    card = small_card("conv")
    model = create_model(card).eval()
    tiles = np.random.default_rng(1).standard_normal((2, 2, 16, 24), dtype=np.float32)
    plain = Predictor(model, card, device="cpu", batch_size=2)
    tta = Predictor(model, card, device="cpu", batch_size=2, tta=True)
    expected = np.mean(
        [np.flip(plain(np.ascontiguousarray(np.flip(tiles, axes))), axes) for axes in flip_axes(2)], axis=0
    )
    np.testing.assert_allclose(tta(tiles), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta(tiles), plain(tiles), atol=1e-4)  # a 3x3 kernel is not flip-symmetric
    assert flip_axes(3)[0] == () and len(flip_axes(3)) == 8


def test_tta_of_a_pointwise_model_changes_nothing():
    card = ModelCard(arch="conv", in_channels=2, classes=["a", "b"])
    model = create_model(card).eval()
    tiles = np.random.default_rng(2).standard_normal((3, 2, 8, 8), dtype=np.float32)
    plain = Predictor(model, card, device="cpu", batch_size=4)(tiles)
    np.testing.assert_allclose(Predictor(model, card, device="cpu", batch_size=4, tta=True)(tiles), plain, atol=1e-6)


def test_receptive_field_is_measured():
    for kernel in (1, 3, 7):
        card = ModelCard(arch="conv", in_channels=1, classes=["a", "b"], arch_kwargs={"kernel_size": kernel})
        assert receptive_field(create_model(card), card, size=32) == kernel
    card = small_card("aspp3d")
    torch.manual_seed(0)
    field = receptive_field(create_model(card), card, size=24)
    assert 10 < field <= 24


def test_describe_models_lists_dims_and_parameters():
    rows = {r["name"]: r for r in describe_models()}
    assert rows["unet3d"]["dims"] == 3 and rows["fcn"]["dims"] == 2
    assert rows["conv"]["parameters"] == 3 * 4 + 4
    assert all(r["parameters"] > 0 and r["about"] for r in rows.values())


def test_card_json_with_a_plain_state_dict(tmp_path):
    card = small_card("unet3d", in_channels=1)
    torch.save(create_model(card).state_dict(), tmp_path / "monai.pt")
    (tmp_path / "card.json").write_text(json.dumps(card.to_dict()))
    model, loaded = load_checkpoint(tmp_path / "monai.pt", card=ModelCard.from_json(tmp_path / "card.json"))
    assert loaded.arch == "unet3d" and loaded.arch_kwargs["channels"] == [4, 8, 16]
    assert type(model).__module__.startswith("monai")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"arch": "unet"}', r"missing keys \['in_channels', 'classes'\]"),
        (
            '{"arch": "unet", "in_channels": 3, "classes": ["a"], "colors": ["#fff", "#000"]}',
            "2 colors for 1",
        ),
        (
            '{"arch": "unet", "in_channels": 3, "classes": ["a"], "tile": 64, "overlap": 33}',
            "tile must be at least twice overlap",
        ),
    ],
)
def test_bad_card_files_are_refused_clearly(tmp_path, text, message):
    (tmp_path / "card.json").write_text(text)
    with pytest.raises(ModelError, match=message):
        ModelCard.from_json(tmp_path / "card.json")


def test_half_checkpoints_are_half_the_size_and_close(tmp_path):
    card = small_card("aspp3d")
    model = create_model(card).eval()
    save_checkpoint(tmp_path / "full.pt", model, card)
    save_checkpoint(tmp_path / "half.pt", model, card, half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    loaded, _ = load_checkpoint(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0.02, atol=0.02)
    save_checkpoint(tmp_path / "again.pt", loaded, card, half=True)  # half -> float32 -> half is exact
    again, _ = load_checkpoint(tmp_path / "again.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), again.parameters(), strict=True))

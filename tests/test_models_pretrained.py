"""Encoder weights from a local file: timm/smp key names, first-conv adaptation, clear refusals."""

import hashlib

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from gigaseg.errors import ModelError
from gigaseg.io.array import ArraySource
from gigaseg.models import ModelCard, create_model, load_checkpoint
from gigaseg.models.pretrained import load_encoder_weights
from gigaseg.models.training import Pair, TrainConfig, train


def saved_encoder(path, name="resnet18", seed=1):
    """A randomly initialised smp encoder's state dict, saved as a 'pretrained' file (no download)."""
    torch.manual_seed(seed)
    state = smp.encoders.get_encoder(name, in_channels=3, weights=None).state_dict()
    torch.save(state, path)
    return state


def unet(bands: int, encoder: str = "resnet18", **kw) -> torch.nn.Module:
    return create_model(ModelCard(arch="unet", encoder=encoder, in_channels=bands, classes=["a", "b"], arch_kwargs=kw))


def test_three_bands_load_the_weights_as_they_are(tmp_path):
    state = saved_encoder(tmp_path / "r18.pt")
    model = unet(3)
    sha = load_encoder_weights(model, tmp_path / "r18.pt", encoder="resnet18")
    assert sha == hashlib.sha256((tmp_path / "r18.pt").read_bytes()).hexdigest()
    loaded = model.encoder.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("bands", [1, 2, 4, 7])
def test_other_band_counts_adapt_the_first_conv_as_smp_does(tmp_path, bands):
    state = saved_encoder(tmp_path / "r18.pt")
    model = unet(bands)
    load_encoder_weights(model, tmp_path / "r18.pt")
    rgb, conv = state["conv1.weight"], model.encoder.state_dict()["conv1.weight"]
    assert conv.shape == (64, bands, 7, 7)
    if bands == 1:
        torch.testing.assert_close(conv[:, 0], rgb.sum(1))
    else:
        for band in range(bands):
            torch.testing.assert_close(conv[:, band], rgb[:, band % 3] * 3 / bands)
    assert torch.equal(model.encoder.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_timm_names_and_a_whole_smp_model_load_too(tmp_path):
    torch.manual_seed(2)
    timm_state = timm.create_model("resnet18", pretrained=False).state_dict()  # with its fc head
    torch.save(timm_state, tmp_path / "timm.pth")
    model = unet(4, "tu-resnet18", encoder_depth=3, decoder_channels=[32, 16, 8])  # timm's, three stages
    load_encoder_weights(model, tmp_path / "timm.pth")
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["model.layer2.0.conv1.weight"], timm_state["layer2.0.conv1.weight"])
    assert torch.equal(loaded["model.conv1.weight"][:, 3], timm_state["conv1.weight"][:, 0] * 3 / 4)
    whole = unet(3)
    torch.save({"state_dict": whole.state_dict()}, tmp_path / "whole.pt")
    again = unet(3)
    load_encoder_weights(again, tmp_path / "whole.pt")
    assert torch.equal(again.encoder.conv1.weight, whole.encoder.conv1.weight)


def test_weights_of_another_encoder_are_one_clear_error(tmp_path):
    saved_encoder(tmp_path / "mobilenet.pt", "mobilenet_v2")
    with pytest.raises(ModelError, match=r"do not fit encoder resnet18: \d+ of its \d+ tensors are missing"):
        load_encoder_weights(unet(3), tmp_path / "mobilenet.pt", encoder="resnet18")
    saved_encoder(tmp_path / "r34.pt", "resnet34")
    with pytest.raises(ModelError, match=r"tensors have no place in it \(e.g. layer1.2"):
        load_encoder_weights(unet(3), tmp_path / "r34.pt", encoder="resnet18")
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="tensors are missing"):
        load_encoder_weights(unet(3), tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(ModelError, match="cannot read encoder weights"):
        load_encoder_weights(unet(3), tmp_path / "junk.pt")
    conv = create_model(ModelCard(arch="conv", in_channels=3, classes=["a"]))
    with pytest.raises(ModelError, match="needs a 2-D network with an smp encoder"):
        load_encoder_weights(conv, tmp_path / "junk.pt")


def test_training_starts_from_the_weights_and_the_card_records_their_hash(tmp_path):
    state = saved_encoder(tmp_path / "r18.pt")
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 64, 64)).astype(np.float32)
    labels = (image[0] > 0).astype(np.uint8)
    pair = Pair(ArraySource(image, spatial_dims=2), ArraySource(labels, spatial_dims=2))
    config = TrainConfig(
        classes=["a", "b"],
        tile=32,
        overlap=8,
        batch_size=2,
        epochs=1,
        steps=1,
        val_tiles=2,
        lr=0.0,
        weight_decay=0.0,
        encoder_weights=str(tmp_path / "r18.pt"),
        device="cpu",
    )
    result = train([pair], tmp_path / "m.pt", config, log=lambda _: None)
    record = result.card.training["encoder_weights"]
    assert record["sha256"] == hashlib.sha256((tmp_path / "r18.pt").read_bytes()).hexdigest()
    model, _ = load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(model.encoder.conv1.weight[:, 3], state["conv1.weight"][:, 0] * 3 / 4)

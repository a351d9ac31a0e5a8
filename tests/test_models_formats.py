"""Other people's networks: every format becomes one scorer that gives the checkpoint's answer."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gigaseg
from gigaseg.errors import InputError, ModelError
from gigaseg.models.checkpoint import load_checkpoint
from gigaseg.models.formats import detect_format, model_sha256, open_model
from tests.conftest import one_error, run, small_unet, write_tiff

MEAN, STD = [100.0] * 3, [50.0] * 3
# What a card must say for a graph that carries nothing: classes, channels, normalisation, tiling.
CARD = {"in_channels": 3, "classes": ["a", "b", "c"], "mean": MEAN, "std": STD, "tile": 64, "overlap": 16}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One seeded U-Net as a gigaseg checkpoint and in every format it can be exported to."""
    d = tmp_path_factory.mktemp("formats")
    checkpoint = small_unet(d / "unet.pt", seed=5)
    net, _ = load_checkpoint(checkpoint)
    x = torch.randn(1, 3, 64, 64)
    paths = {"checkpoint": checkpoint}
    paths["traced"] = d / "traced.ts"
    torch.jit.save(torch.jit.trace(net, x), paths["traced"])
    torch.save(net.state_dict(), d / "state.pth")
    paths["state_dict"] = d / "state.pth"
    paths["pt2"] = d / "dynamic.pt2"
    h, w = torch.export.Dim("h", min=2, max=512), torch.export.Dim("w", min=2, max=512)
    program = torch.export.export(net, (x,), dynamic_shapes={"x": {2: 8 * h, 3: 8 * w}})
    torch.export.save(program, paths["pt2"])
    paths["onnx"] = d / "dynamic.onnx"
    torch.onnx.export(
        net, (x,), paths["onnx"], dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}
    )
    paths["onnx256"] = d / "fixed256.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 256, 256),), paths["onnx256"], dynamo=False, input_names=["x"])
    paths["smp"] = d / "smp-folder"
    net.save_pretrained(paths["smp"])
    return paths


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    rng = np.random.default_rng(11)
    return write_tiff(tmp_path_factory.mktemp("scene") / "scene.tif", rng.integers(0, 200, (3, 150, 170)).astype("u1"))


def segmented(tmp_path, scene, model, card=None, name="out.zarr", **options):
    options = gigaseg.SegmentOptions(probabilities="float32", **options)
    gigaseg.segment(scene, model, tmp_path / name, options, card=card)
    store = gigaseg.open_store(tmp_path / name)
    return store.mask[...], store.probabilities[...]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models, scene):
    """The gigaseg checkpoint's mask and probabilities over the scene."""
    return segmented(tmp_path_factory.mktemp("ref"), scene, models["checkpoint"])


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("traced", "torchscript"),
        ("pt2", "torch.export"),
        ("onnx", "onnx"),
        ("smp", "smp"),
        ("state_dict", "state_dict"),
    ],
)
def test_every_format_gives_the_checkpoints_mask(tmp_path, models, scene, reference, name, fmt):
    card = None if fmt == "smp" else CARD
    if fmt == "smp":  # config.json says architecture, channels and class count; names and moments from a card
        card = {"classes": ["a", "b", "c"], "mean": MEAN, "std": STD, "tile": 64, "overlap": 16}
    elif fmt == "state_dict":
        card = {**CARD, "arch": "unet", "encoder": "resnet18"}
        card["arch_kwargs"] = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
    assert open_model(models[name], card=card).format == fmt
    mask, probabilities = segmented(tmp_path, scene, models[name], card=card)
    np.testing.assert_allclose(probabilities, reference[1], atol=2e-5)
    assert np.array_equal(mask, reference[0])


def plain_forward(net: nn.Module, image: np.ndarray) -> np.ndarray:
    """Softmax probabilities of one forward of the whole (one-tile) image, normalised as the card says."""
    x = (torch.from_numpy(image[None].astype(np.float32)) - 100.0) / 50.0
    with torch.no_grad():
        return torch.softmax(net(x), 1)[0].numpy()


@pytest.mark.parametrize("name", ["traced", "pt2", "onnx", "onnx256", "scripted", "module"])
def test_one_tile_equals_a_plain_forward_of_the_network(tmp_path, models, name):
    """A scene of one tile: gigaseg's probabilities are the network's own softmax."""
    side = 256 if name == "onnx256" else 64
    image = np.random.default_rng(3).integers(0, 200, (3, side, side)).astype("u1")
    tif = write_tiff(tmp_path / "one.tif", image)
    net, _ = load_checkpoint(models["checkpoint"])
    model: Path | nn.Module = net if name == "module" else models.get(name, tmp_path / "conv.ts")
    card = {**CARD, "tile": side}
    if name == "onnx256":
        card.pop("tile"), card.pop("overlap")  # the graph's fixed input says the tile
    if name == "scripted":  # smp's U-Net does not script; a scriptable network of the same shape does
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
        torch.jit.save(torch.jit.script(net), model)
    if name == "module":
        card = {**card, "arch": "unet", "encoder": "resnet18"}
    mask, probabilities = segmented(tmp_path, tif, model, card=card)
    expected = plain_forward(net, image)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert (mask == expected.argmax(0)).mean() > 0.999  # ties within 1e-5 may break either way


class Softmaxed(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), 1)


def test_a_network_ending_in_a_softmax_gives_its_logits_twins_mask(tmp_path, models, scene, reference):
    net, _ = load_checkpoint(models["checkpoint"])
    path = tmp_path / "softmaxed.ts"
    torch.jit.save(torch.jit.trace(Softmaxed(net), torch.randn(1, 3, 64, 64)), path)
    mask, probabilities = segmented(tmp_path, scene, path, card={**CARD, "outputs": "probabilities"})
    assert np.array_equal(mask, reference[0])
    np.testing.assert_allclose(probabilities, reference[1], atol=2e-5)
    with pytest.warns(gigaseg.errors.GigasegWarning, match="ends in a softmax"):  # said as logits: warned
        segmented(tmp_path, scene, path, card=CARD, name="twice.zarr")


def test_one_sigmoid_channel_is_a_two_class_mask(tmp_path):
    net = nn.Conv2d(3, 1, 1).eval()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1))
        net.bias.fill_(-0.2)
    image = np.random.default_rng(4).integers(0, 200, (3, 64, 64)).astype("u1")
    tif = write_tiff(tmp_path / "s.tif", image)
    path = tmp_path / "sigmoid.ts"
    torch.jit.save(torch.jit.script(net), path)
    card = {**CARD, "classes": ["land", "water"], "outputs": "sigmoid"}
    mask, probabilities = segmented(tmp_path, tif, path, card=card)
    with torch.no_grad():
        z = net((torch.from_numpy(image[None].astype(np.float32)) - 100) / 50)[0, 0].numpy()
    np.testing.assert_allclose(probabilities[1], 1 / (1 + np.exp(-z)), atol=1e-5)
    clear = np.abs(z) > 1e-6  # where sigmoid(z) is 0.5 either class is right
    assert clear.mean() > 0.99 and np.array_equal(mask[clear], (z > 0)[clear])


def test_a_fixed_size_graph_takes_only_its_tile_and_pads_a_smaller_scene(tmp_path, models):
    small = write_tiff(tmp_path / "small.tif", np.full((3, 100, 120), 90, "u1"))
    loaded = open_model(models["onnx256"], card={k: v for k, v in CARD.items() if k not in ("tile", "overlap")})
    assert loaded.card.input_size == 256 and loaded.card.tile == 256
    assert loaded.sources["input_size"].endswith("(the graph's input shape)")
    mask, _ = segmented(tmp_path, small, models["onnx256"], card={"classes": CARD["classes"], "mean": MEAN, "std": STD})
    assert mask.shape == (100, 120)
    with pytest.raises(InputError, match="takes only tiles of 256"):
        segmented(tmp_path, small, models["onnx256"], card={"classes": ["a", "b", "c"]}, name="t.zarr", tile=128)


def test_a_fixed_batch_graph_is_fed_full_batches(tmp_path, models):
    """The 256 ONNX graph takes one tile at a time; batches of 4 run as four of one and agree with
    the checkpoint run at the same tiling."""
    image = np.random.default_rng(8).integers(0, 200, (3, 300, 420)).astype("u1")
    tif = write_tiff(tmp_path / "big.tif", image)
    card = {"classes": ["a", "b", "c"], "mean": MEAN, "std": STD}
    mask, probabilities = segmented(tmp_path, tif, models["onnx256"], card=card, batch_size=4)
    expected = segmented(tmp_path, tif, models["checkpoint"], name="c.zarr", tile=256, overlap=32, batch_size=4)
    np.testing.assert_allclose(probabilities, expected[1], atol=2e-5)
    assert (mask == expected[0]).mean() > 0.9999


def test_normalize_steps_that_measure_the_scene_are_fitted_on_it(tmp_path, models):
    """Percentiles and the scene's own moments are measured on the scene, then scaled, and recorded."""
    image = np.random.default_rng(9).integers(0, 1000, (3, 128, 128)).astype("u2")
    tif = write_tiff(tmp_path / "wide.tif", image)
    steps = [{"clip_percentiles": [1, 99]}, {"zscore": "volume"}, {"scale": 0.5, "offset": 1.0}]
    card = {**CARD, "mean": None, "std": None, "normalize": steps}
    card = {k: v for k, v in card.items() if v is not None}
    gigaseg.segment(tif, models["traced"], tmp_path / "n.zarr", card=card)
    fitted = gigaseg.open_store(tmp_path / "n.zarr").attrs["model_input"]["intensity"]
    np.testing.assert_allclose(fitted["low"], np.percentile(image, 1, axis=(1, 2)), rtol=0.05)
    np.testing.assert_allclose(fitted["high"], np.percentile(image, 99, axis=(1, 2)), rtol=0.02)
    np.testing.assert_allclose(fitted["mean"], image.mean(axis=(1, 2)), rtol=0.02)
    np.testing.assert_allclose(fitted["std"], image.std(axis=(1, 2)), rtol=0.05)
    assert fitted["scale"] == [0.5] * 3 and fitted["offset"] == [1.0] * 3


def test_the_card_comes_from_the_model_then_beside_it_then_the_argument(tmp_path, models):
    path = tmp_path / "m.onnx"
    shutil.copy(models["onnx"], path)
    with pytest.raises(ModelError, match="does not say its classes"):
        open_model(path)
    beside = {k: v for k, v in CARD.items() if k != "in_channels"}
    Path(f"{path}.card.json").write_text(json.dumps({**beside, "classes": ["x", "y", "z"]}))
    loaded = open_model(path, card={"classes": ["a", "b", "c"]})
    assert loaded.card.classes == ["a", "b", "c"] and loaded.sources["classes"] == "--card"
    assert loaded.card.mean == MEAN and loaded.sources["mean"] == f"{path}.card.json"
    assert loaded.card.in_channels == 3 and "graph" in loaded.sources["in_channels"]
    assert loaded.card.arch == "onnx"


@pytest.mark.parametrize("name", ["traced", "pt2", "onnx", "checkpoint"])
def test_card_embed_writes_the_card_into_the_model(tmp_path, models, name):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({**CARD, "classes": ["sea", "land", "cloud"]}))
    out = tmp_path / f"embedded{models[name].suffix}"
    result = run("card", "embed", str(models[name]), str(card), "--out", str(out))
    assert result.exit_code == 0, result.output
    loaded = open_model(out)
    assert loaded.card.classes == ["sea", "land", "cloud"]
    inspected = run("models", "inspect", str(out))
    assert inspected.exit_code == 0, inspected.output
    assert '"sea"' in inspected.output and "format:" in inspected.output and "sha256:" in inspected.output


def test_inspect_says_what_is_missing_and_what_the_graph_takes(models):
    result = run("models", "inspect", str(models["onnx256"]))
    one_error(result, "does not say its classes")
    assert "graph:   input (1, 3, 256, 256), output (1, 3, 256, 256)" in result.stdout
    assert "missing: classes" in result.stdout and "input_size" in result.stdout
    result = run("models", "inspect", str(models["onnx256"]), "--card", "/nonexistent.json")
    one_error(result, "cannot read model card")
    listed = run("models")
    assert listed.exit_code == 0 and "unet" in listed.output


def test_the_fingerprint_holds_the_models_bytes_and_card(tmp_path, models, scene):
    out = tmp_path / "r.zarr"
    gigaseg.segment(scene, models["onnx"], out, card=CARD)
    fingerprint = gigaseg.open_store(out).attrs["fingerprint"]
    assert fingerprint["weights"]["sha256"] == model_sha256(models["onnx"])
    options = gigaseg.SegmentOptions(resume=True)
    with pytest.raises(InputError, match="model_card_sha256"):
        gigaseg.segment(scene, models["onnx"], out, options, card={**CARD, "std": [51.0] * 3})
    with pytest.raises(InputError, match="weights.sha256"):
        gigaseg.segment(scene, models["traced"], out, options, card=CARD)
    assert model_sha256(models["smp"]) != model_sha256(models["smp"] / "model.safetensors")


def test_bands_are_picked_by_the_names_the_model_gives(tmp_path, models):
    image = np.random.default_rng(5).integers(0, 200, (4, 64, 64)).astype("u1")
    names = ("nir", "red", "green", "blue")
    named = write_tiff(tmp_path / "named.tif", image, descriptions=names, photometric="minisblack")
    in_order = write_tiff(tmp_path / "ordered.tif", image[[3, 2, 1]])
    card = {**CARD, "band_names": ["blue", "green", "red"]}
    by_name, _ = segmented(tmp_path, named, models["traced"], card=card)
    expected, _ = segmented(tmp_path, in_order, models["traced"], card=CARD, name="b.zarr")
    assert np.array_equal(by_name, expected)
    with pytest.raises(InputError, match="are nir, red, green, blue, without swir"):
        segmented(tmp_path, named, models["traced"], card={**card, "band_names": ["blue", "green", "swir"]}, name="c")


# ----------------------------------------------------------------------------- bad input, one line each


def newer_torchscript(models, tmp_path) -> Path:
    """The traced archive with its format version set beyond what this torch reads."""
    path = tmp_path / "newer.ts"
    with zipfile.ZipFile(models["traced"]) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, b"99\n" if item.filename.endswith("/version") else data)
    return path


class NaNs(nn.Module):
    def forward(self, x):
        return torch.log(x[:, :3] * 0 - 1)


def bad_models(models, tmp_path) -> dict[str, tuple[Path, dict | None, str]]:
    nan = tmp_path / "nan.ts"
    torch.jit.save(torch.jit.script(NaNs()), nan)
    pickled = tmp_path / "pickled.pt"
    torch.save(nn.Conv2d(3, 3, 1), pickled)
    optimizer = tmp_path / "optimizer.pt"
    torch.save(torch.optim.SGD(nn.Conv2d(3, 3, 1).parameters(), lr=0.1).state_dict(), optimizer)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"0")
    bounded = tmp_path / "bounded.pt2"  # sides of 8 to 96 pixels only
    side = torch.export.Dim("side", min=1, max=12)
    conv = nn.Conv2d(3, 3, 3, padding=1).eval()
    torch.export.save(torch.export.export(conv, (torch.randn(1, 3, 64, 64),), dynamic_shapes=({2: 8 * side},)), bounded)
    volume_net = tmp_path / "conv3d.ts"
    torch.jit.save(torch.jit.script(nn.Conv3d(3, 3, 1)), volume_net)
    damaged = tmp_path / "damaged.ts"  # its code files garbled, as by a bad disk or download
    with zipfile.ZipFile(models["traced"]) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            garbled = item.filename.endswith(".py")
            dst.writestr(item, b"\xff\xfe" * 50 if garbled else src.read(item.filename))
    smp_bad = tmp_path / "smp-bad"
    shutil.copytree(models["smp"], smp_bad)
    config = json.loads((smp_bad / "config.json").read_text())
    (smp_bad / "config.json").write_text(json.dumps({**config, "activation": "sigmoid"}))
    plain = {k: v for k, v in CARD.items() if k not in ("mean", "std")}
    return {
        "tile beyond the graph": (bounded, {**plain, "tile": 128, "overlap": 8}, "does not take a (1, 3, 128, 128)"),
        "3-D graph said 2-D": (volume_net, plain, '"spatial_dims": 3'),
        "steps for 2 of 3 bands": (
            models["traced"],
            {**plain, "normalize": [{"divide": [1, 2]}]},
            "each of the 3 bands",
        ),
        "infinite std": (models["traced"], {**CARD, "std": [float("inf")] * 3}, "std must be a list of finite numbers"),
        "huge channels": (models["traced"], {**plain, "in_channels": 10**20}, "in_channels must be between"),
        "numbers as names": (models["traced"], {**CARD, "band_names": [1, 2, 3]}, "band_names must be a list of names"),
        "twice the same class": (models["traced"], {**CARD, "classes": ["a", "a", "b"]}, "classes names one twice"),
        "receptive field": (models["traced"], {**CARD, "receptive_field": -5}, "receptive_field must be"),
        "encoder a number": (models["state_dict"], {**CARD, "arch": "unet", "encoder": 5}, "encoder must be a name"),
        "damaged TorchScript": (damaged, CARD, "TorchScript file"),
        "multi-label sigmoid": (smp_bad, {"classes": ["a", "b", "c"]}, "multi-label sigmoids are not supported"),
        "channels against the graph": (models["onnx"], {**plain, "in_channels": 4}, "the graph of"),
        "unknown key": (models["traced"], {**CARD, "colour": "red"}, "unknown keys ['colour']"),
        "sigmoid of three": (models["traced"], {**CARD, "outputs": "sigmoid"}, "binary mask of two classes"),
        "tile vs input_size": (models["traced"], {**CARD, "input_size": 128}, "contradicts input_size"),
        "normalize twice": (models["traced"], {**CARD, "normalize": [{"divide": 255}]}, "both say how to normalise"),
        "bad step": (
            models["traced"],
            {**CARD, "mean": None, "std": None, "normalize": [{"log": 1}]},
            "normalize step",
        ),
        "bad outputs": (models["traced"], {**CARD, "outputs": "softmax"}, "outputs must be one of"),
        "channels": (models["traced"], {**CARD, "in_channels": 4, "mean": None, "std": None}, "does not take a (1, 4"),
        "classes": (models["traced"], {**CARD, "classes": ["a", "b"]}, "its card says 2 classes"),
        "non-finite": (nan, CARD, "non-finite scores"),
        "newer torch": (newer_torchscript(models, tmp_path), CARD, "TorchScript file"),
        "pickled module": (pickled, None, "export the network"),
        "optimizer": (optimizer, {**CARD, "arch": "unet"}, "optimizer's state"),
        "folder": (folder, None, "is a folder but not"),
    }


BAD = [
    "tile beyond the graph",
    "3-D graph said 2-D",
    "steps for 2 of 3 bands",
    "infinite std",
    "huge channels",
    "numbers as names",
    "twice the same class",
    "receptive field",
    "encoder a number",
    "damaged TorchScript",
    "multi-label sigmoid",
    "channels against the graph",
    "unknown key",
    "sigmoid of three",
    "tile vs input_size",
    "normalize twice",
    "bad step",
    "bad outputs",
    "channels",
    "classes",
    "non-finite",
    "newer torch",
    "pickled module",
    "optimizer",
    "folder",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_models_and_cards_are_one_line_and_create_nothing(tmp_path, models, scene, case):
    model, card, words = bad_models(models, tmp_path)[case]
    if case == "channels":  # four bands for a card of four channels, and a graph that takes three
        scene = write_tiff(tmp_path / "four.tif", np.ones((4, 64, 64), "u1"))
    args = ["segment", str(scene), "--model", str(model), "--out", str(tmp_path / "o.zarr")]
    if card is not None:
        (tmp_path / "card.json").write_text(json.dumps({k: v for k, v in card.items() if v is not None}))
        args += ["--card", str(tmp_path / "card.json")]
    one_error(run(*args), words)
    assert not (tmp_path / "o.zarr").exists()


class NaNsAbove50(nn.Module):
    """Finite on the card check's small random input, NaN where a pixel is over 50."""

    def forward(self, x):
        return torch.where(x[:, :3] > 50, torch.full_like(x[:, :3], float("nan")), x[:, :3])


def test_non_finite_scores_on_the_scene_fail_the_block_and_leave_nothing(tmp_path):
    image = np.zeros((3, 64, 64), "u1")
    image[:, 10:20, 10:20] = 250  # a value the network was never meant to see
    tif = write_tiff(tmp_path / "hot.tif", image)
    model = tmp_path / "hot.ts"
    torch.jit.save(torch.jit.script(NaNsAbove50()), model)
    (tmp_path / "card.json").write_text(json.dumps({"in_channels": 3, "classes": ["a", "b", "c"], "tile": 64}))
    args = ["segment", str(tif), "--model", str(model), "--card", str(tmp_path / "card.json")]
    one_error(run(*args, "--out", str(tmp_path / "o.zarr")), "non-finite scores (NaN or inf) in block [0, 0]")
    assert not (tmp_path / "o.zarr").exists()


def test_a_damaged_embedded_card_gives_way_to_a_given_one_and_is_replaced_by_embed(tmp_path, models, scene):
    import onnx

    proto = onnx.load(models["onnx"])
    proto.metadata_props.add(key="gigaseg_card.json", value="{not json")
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, broken)
    (tmp_path / "card.json").write_text(json.dumps(CARD))
    result = run("segment", scene, "--model", broken, "--card", tmp_path / "card.json", "--out", tmp_path / "o.zarr")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("is not valid JSON") == 1 and "left out" in result.stderr
    fixed = tmp_path / "fixed.onnx"
    assert run("card", "embed", broken, tmp_path / "card.json", "--out", fixed).exit_code == 0
    assert open_model(fixed).card.classes == CARD["classes"]
    one_error(run("card", "embed", broken, tmp_path / "card.json", "--out", tmp_path / "no" / "x.onnx"), "cannot write")


class TwoHeads(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        scores = self.net(x)
        return scores, scores.mean(1)


def test_an_onnx_graph_with_two_outputs_scores_with_its_first(tmp_path, models, scene, reference):
    net, _ = load_checkpoint(models["checkpoint"])
    path = tmp_path / "two.onnx"
    torch.onnx.export(
        TwoHeads(net),
        (torch.randn(1, 3, 64, 64),),
        path,
        dynamo=False,
        input_names=["x"],
        output_names=["scores", "aux"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
    )
    with pytest.warns(gigaseg.errors.GigasegWarning, match="its first, 'scores', is taken as the scores"):
        mask, _ = segmented(tmp_path, scene, path, card=CARD)
    assert np.array_equal(mask, reference[0])


def test_bands_named_twice_in_the_raster_are_refused(tmp_path, models):
    image = np.ones((4, 64, 64), "u1")
    tif = write_tiff(tmp_path / "twice.tif", image, descriptions=("red", "red", "green", "blue"))
    with pytest.raises(InputError, match="describes bands 1 and 2 both as 'red'"):
        segmented(tmp_path, tif, models["traced"], card={**CARD, "band_names": ["blue", "green", "red"]})


def test_a_tile_off_the_size_multiple_is_refused(tmp_path, models, scene):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({**CARD, "size_multiple": 32, "tile": 96, "overlap": 16}))
    args = ["segment", str(scene), "--model", str(models["traced"]), "--card", str(card)]
    one_error(run(*args, "--tile", "100", "--out", str(tmp_path / "o.zarr")), "not a multiple of 32")
    card.write_text(json.dumps({**CARD, "size_multiple": 32, "tile": 100}))
    one_error(run(*args, "--out", str(tmp_path / "o.zarr")), "not a multiple of size_multiple 32")


def test_onnx_without_onnxruntime_names_the_extra(tmp_path, models, scene, monkeypatch):
    from gigaseg.models import runtimes

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    monkeypatch.setattr(runtimes, "_SESSIONS", {})
    args = ["segment", str(scene), "--model", str(models["onnx"]), "--out", str(tmp_path / "o.zarr")]
    one_error(run(*args), "gigaseg[onnx]")


def test_formats_are_told_by_content_not_suffix(tmp_path, models):
    for name, fmt in [("traced", "torchscript"), ("pt2", "torch.export"), ("onnx", "onnx"), ("smp", "smp")]:
        renamed = tmp_path / f"{name}.bin"
        if models[name].is_dir():
            shutil.copytree(models[name], renamed)
        else:
            shutil.copy(models[name], renamed)
        assert detect_format(renamed) == fmt
    assert detect_format(models["checkpoint"]) == "torch"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smp", "onnx"])
def test_a_job_ships_any_format_to_its_workers(tmp_path, models, scene, reference, name):
    """A job file's model (a folder, an ONNX file) and card reach two worker processes, which read
    no file beside the model: the masks equal the checkpoint's."""
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.runner import run_job

    (tmp_path / "scenes").mkdir()
    shutil.copy(scene, tmp_path / "scenes" / "s.tif")
    model = tmp_path / models[name].name
    (shutil.copytree if models[name].is_dir() else shutil.copy)(models[name], model)
    card = {"classes": ["a", "b", "c"], "mean": MEAN, "std": STD, "tile": 64, "overlap": 16}
    (tmp_path / "card.json").write_text(json.dumps(card if name == "smp" else {**card, "in_channels": 3}))
    (tmp_path / "job.yaml").write_text(
        f"inputs: [scenes/s.tif]\nmodel: {model.name}\ncard: card.json\noutput: {{dir: out}}\n"
        "tiling: {block: 64, chunk: 64}\ncluster: {workers: 2}\n"
    )
    report = run_job(load_job(tmp_path / "job.yaml"), base=tmp_path)
    assert report.ok, report.scenes
    assert np.array_equal(gigaseg.open_store(tmp_path / "out" / "s_mask.zarr").mask[...], reference[0])

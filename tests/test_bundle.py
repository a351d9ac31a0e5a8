"""MONAI bundles as models: the configs read as card keys, and gigaseg's mask against MONAI's own pipeline.

The oracle is MONAI's bundle machinery itself: ``ConfigParser`` reads the
bundle's ``inference.json`` (written as real bundles write it, with ``@``
references and ``$`` expressions) and instantiates its preprocessing, network,
inferer and postprocessing (``Invertd`` back to the input's voxels). The network
is a small MONAI U-Net trained for a few steps on a phantom of blobs, so its
classes follow the blobs' shapes and the masks have borders worth comparing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import gigaseg
from gigaseg.errors import GigasegWarning, ModelError
from gigaseg.models.bundle import bundle_card, size_multiple
from gigaseg.models.card import ModelCard
from gigaseg.models.formats import open_model

from .conftest import one_error, run

SPACING = [1.5, 1.5, 2.0]  # the bundle's Spacingd pixdim
WINDOW = {"a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}  # spleen_ct_segmentation's
CLASSES = ["background", "core", "rim"]
# Blobs in world millimetres (centre, radius, HU above the -80 HU background): every volume images the same scene.
BLOBS = [((-15, -10, 5), 9, 260), ((14, 8, -6), 12, 200), ((0, 18, 15), 7, 300), ((-8, 14, -18), 10, 120)]
NETWORK_DEF = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": "@num_classes",
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "norm": "batch",
}


# ---------------------------------------------------------------------------- the scene and the bundle


def phantom(shape: tuple[int, ...], spacing: list[float], flips=(False, False, False)) -> tuple[np.ndarray, np.ndarray]:
    """HU on a grid of ``shape`` voxels centred on the world origin; ``flips`` make axes run L, P or I."""
    signs = np.where(flips, -1.0, 1.0)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * spacing)
    affine[:3, 3] = -signs * (np.array(shape) - 1) / 2 * spacing
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:]).T
    hu = np.full(len(xyz), -80.0)
    for centre, radius, height in BLOBS:
        hu += height * np.exp(-((xyz - centre) ** 2).sum(1) / (2 * radius**2))
    return hu.reshape(shape).astype(np.float32), affine


def write_volume(path: Path, shape, spacing, flips=(False, False, False)) -> Path:
    data, affine = phantom(shape, spacing, flips)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    nib.save(image, path)
    return path


def unet() -> torch.nn.Module:
    """The bundle's network_def, seeded."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2), norm="batch")


def trained_unet() -> torch.nn.Module:
    """The U-Net trained 40 steps to tell blob cores (> 60 HU) and rims (> -20 HU) from the background
    at the bundle's spacing: classes with shapes, where a random network's argmax is a checkerboard that
    a shift of a quarter voxel reshuffles."""
    net = unet()
    hu, _ = phantom((48, 48, 36), SPACING)
    x = torch.from_numpy(np.clip((hu + 57) / 221, 0, 1))[None, None]
    labels = torch.from_numpy(np.where(hu > 60, 1, np.where(hu > -20, 2, 0)))[None]
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(40):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), labels).backward()
        optimiser.step()
    return net.eval()


def metadata() -> dict[str, Any]:
    shape = ["4*n", "4*n", "4*n"]
    return {
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "name": "blobs_ct_segmentation",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1, "spatial_shape": shape}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 3,
                    "spatial_shape": shape,
                    "channel_def": dict(enumerate(CLASSES)),
                }
            },
        },
    }


def preprocessing() -> list[dict[str, Any]]:
    return [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", **WINDOW},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]


def inference(transforms: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    """An inference.json as the model zoo's spleen bundle writes it."""
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(@bundle_root + '/data/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "num_classes": 3,
        "pixdim": SPACING,
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing() if transforms is None else transforms},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [32, 32, 32],
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "separate_folder": False},
            ],
        },
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
    }
    return {**config, **changes}


def write_bundle(
    folder: Path, config: dict[str, Any] | None = None, *, net: torch.nn.Module | None = None, files=("ts", "pt")
) -> Path:
    """A bundle folder: configs, and the network as models/model.ts and/or models/model.pt."""
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata(), indent=4))
    (folder / "configs" / "inference.json").write_text(json.dumps(config or inference(), indent=4))
    if net is not None:
        (folder / "models").mkdir()
        if "pt" in files:
            torch.save(net.state_dict(), folder / "models" / "model.pt")
        if "ts" in files:
            with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; bundles still ship it
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(torch.jit.script(net), folder / "models" / "model.ts")
    return folder


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return trained_unet()


@pytest.fixture(scope="module")
def untrained() -> torch.nn.Module:
    """The same network, untrained: for what is refused before a network is made, or made and not run."""
    return unet().eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, network) -> Path:
    return write_bundle(tmp_path_factory.mktemp("zoo") / "blobs_ct_segmentation", net=network)


@pytest.fixture(scope="module")
def small_volume(tmp_path_factory) -> Path:
    return write_volume(tmp_path_factory.mktemp("volume") / "small.nii.gz", (40, 40, 32), SPACING)


# ---------------------------------------------------------------------------- the two pipelines


def monai_labels(bundle: Path, image: Path, out: Path) -> np.ndarray:
    """MONAI's own bundle machinery on ``image``: its labels on the input's voxels, ``(i, j, k)``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(bundle / "configs" / "metadata.json")
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"], parser["output_dir"] = str(bundle), str(out)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    item = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        item["pred"] = parser.get_parsed_content("inferer")(item["image"][None], net.eval())[0]
    item = parser.get_parsed_content("postprocessing")(item)
    return np.asarray(item["pred"][0]).astype(np.uint8)


def gigaseg_labels(image: Path, model: Path, out: Path, card: dict[str, Any] | None = None) -> np.ndarray:
    """gigaseg's mask of ``image``, from the store's ``(k, j, i)`` to ``(i, j, k)``."""
    gigaseg.segment(image, model, out, gigaseg.SegmentOptions(device="cpu"), card=card)
    return np.asarray(gigaseg.open_store(out).mask[...]).transpose(2, 1, 0)


def dice(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float(2 * ((a == c) & (b == c)).sum() / max(1, (a == c).sum() + (b == c).sum())) for c in range(3)]


VOLUMES = {
    # name: (shape (i, j, k), voxel size, flipped axes)
    "at the bundle's spacing, RAS": ((48, 48, 36), SPACING, (False, False, False)),
    "anisotropic 0.8 x 0.8 x 2.5, LPS": ((90, 90, 29), [0.8, 0.8, 2.5], (True, True, False)),
    "isotropic 1 mm, RAS": ((72, 72, 72), [1.0, 1.0, 1.0], (False, False, False)),
}


@pytest.mark.parametrize("name", list(VOLUMES))
def test_gigaseg_agrees_with_monais_own_bundle_pipeline(tmp_path, bundle, name):
    shape, spacing, flips = VOLUMES[name]
    image = write_volume(tmp_path / "scene.nii.gz", shape, spacing, flips)
    theirs = monai_labels(bundle, image, tmp_path / "monai")
    ours = gigaseg_labels(image, bundle, tmp_path / "out.zarr")
    scores = dice(ours, theirs)
    print(f"{name}: Dice {dict(zip(CLASSES, np.round(scores, 4).tolist(), strict=True))}, mean {np.mean(scores):.4f}")
    assert ours.shape == theirs.shape == shape
    assert all((theirs == c).mean() > 0.03 for c in range(3))  # every class holds a shape of its own
    assert np.mean(scores) >= 0.97


def test_the_state_dict_and_network_def_give_the_torchscripts_mask(tmp_path, network, small_volume):
    scripted = write_bundle(tmp_path / "ts", net=network, files=("ts",))
    state = write_bundle(tmp_path / "pt", net=network, files=("pt",))
    assert open_model(state).module.__class__.__name__ == "UNet"
    ours = gigaseg_labels(small_volume, state, tmp_path / "pt.zarr")
    assert (ours == gigaseg_labels(small_volume, scripted, tmp_path / "ts.zarr")).mean() > 0.9999


# ---------------------------------------------------------------------------- the configs as card keys


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_the_configs_become_the_card(tmp_path, untrained, suffix):
    bundle = write_bundle(tmp_path / "blobs_ct_segmentation", net=untrained, files=("ts",))
    if suffix == "yaml":  # the same config as YAML, as some bundles ship it
        import yaml

        config = bundle / "configs" / "inference.json"
        config.with_suffix(".yaml").write_text(yaml.safe_dump(json.loads(config.read_text())))
        config.unlink()
    assert bundle_card(str(bundle)) == {
        "arch": "monai_bundle:blobs_ct_segmentation",
        "in_channels": 1,
        "classes": CLASSES,
        "spatial_dims": 3,
        "size_multiple": 4,
        "tile": 32,
        "overlap": 8,  # MONAI steps by int(32 * 0.75) = 24
        "orientation": "RAS",
        "spacing": SPACING,
        "normalize": [{"mean": -57.0, "std": 221.0}, {"scale": 1.0, "offset": 0.0}, {"clip": [0.0, 1.0]}],
    }
    loaded = open_model(bundle)
    assert loaded.format == "monai_bundle" and loaded.card.outputs == "logits"


@pytest.mark.parametrize(
    "window",
    [
        WINDOW,
        {"a_min": -57.3, "a_max": 164.1, "b_min": 0.1, "b_max": 0.9, "clip": True},
        {"a_min": -1000, "a_max": 1000},
    ],
)
def test_the_intensity_window_is_monais_arithmetic_bit_for_bit(tmp_path, window):
    from monai.transforms import ScaleIntensityRange

    transforms = [{"_target_": "ScaleIntensityRanged", "keys": "image", **window}]
    keys = bundle_card(str(write_bundle(tmp_path / "b", inference(transforms))))
    card = ModelCard(arch="x", in_channels=1, classes=CLASSES, spatial_dims=3, normalize=keys["normalize"])
    hu = np.random.default_rng(0).uniform(-1200, 1200, (1, 1, 8, 9, 10)).astype(np.float32)
    hu[0, 0, 0, 0, :4] = [window["a_min"], window["a_max"], -57.3, 164.1]
    expected = np.asarray(ScaleIntensityRange(**window)(torch.from_numpy(hu[0])))
    np.testing.assert_array_equal(card.normalizer()(hu.copy())[0], expected)


def card_of(tmp_path: Path, transforms: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    return bundle_card(str(write_bundle(tmp_path / "b", inference(transforms, **changes))))


def spacing(pixdim: Any, **kw: Any) -> dict[str, Any]:
    return {"_target_": "monai.transforms.Spacingd", "keys": ["image", "label"], "pixdim": pixdim, **kw}


RAS = {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}
MAPPED = {
    "one pixdim is isotropic": ([RAS, spacing(1.0)], {"spacing": 1.0, "orientation": "RAS"}),
    "pixdim per voxel axis without Orientationd": ([spacing([0.8, 0.9, 3])], {"spacing": [0.8, 0.9, 3.0]}),
    "isotropic Spacingd before Orientationd": ([spacing([2, 2, 2]), RAS], {"spacing": 2.0, "orientation": "RAS"}),
    "the image's mode of a per-key list": (
        [RAS, spacing([1, 1, 2], mode=["bilinear", "nearest"])],
        {"spacing": [1.0, 1.0, 2.0], "orientation": "RAS"},
    ),
    "closest canonical is RAS": (
        [{"_target_": "OrientationD", "keys": "image", "as_closest_canonical": True}],
        {"orientation": "RAS"},
    ),
    "z-score": ([{"_target_": "NormalizeIntensityd", "keys": "image"}], {"normalize": [{"zscore": "volume"}]}),
    "fixed moments": (
        [{"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": [40], "divisor": [80]}],
        {"normalize": [{"mean": [40], "std": [80]}]},
    ),
    "percentile clip, shift, factor": (
        [
            {"_target_": "ClipIntensityPercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5},
            {"_target_": "ShiftIntensityd", "keys": "image", "offset": 3},
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": None, "maxv": None, "factor": 1.0},
        ],
        {
            "normalize": [
                {"clip_percentiles": [0.5, 99.5]},
                {"scale": 1.0, "offset": 3.0},
                {"scale": 2.0, "offset": 0.0},
            ]
        },
    ),
    "a transform of the labels alone": ([{"_target_": "HistogramNormalized", "keys": "label"}], {}),
    "a disabled transform": ([{"_target_": "HistogramNormalized", "keys": "image", "_disabled_": True}], {}),
}


@pytest.mark.parametrize("case", list(MAPPED))
def test_each_transform_maps_onto_card_keys(tmp_path, case):
    transforms, expected = MAPPED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GigasegWarning)  # each maps exactly: nothing to warn of
        keys = card_of(tmp_path, transforms)
    geometry = {k: keys[k] for k in ("spacing", "orientation", "normalize") if k in keys}
    assert geometry == expected


def test_what_gigaseg_does_otherwise_is_a_warning(tmp_path):
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "mode": "constant"}
    with pytest.warns(GigasegWarning) as caught:
        keys = card_of(tmp_path, [RAS, spacing([1, 1, 2], mode="nearest")], inferer=inferer)
    assert keys["spacing"] == [1.0, 1.0, 2.0]
    lines = [str(w.message) for w in caught]
    assert any("mode 'nearest'" in line for line in lines) and any("blend constant" in line for line in lines)


def test_the_inferer_gives_tile_and_overlap_per_axis(tmp_path):
    inferer = {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@patch",
        "overlap": [0.5, 0.5, 0.625],
        "mode": "gaussian",
    }
    with pytest.warns(GigasegWarning, match="more than half a tile"):
        keys = card_of(tmp_path, [], inferer=inferer, patch=[96, 96, 64])
    assert (keys["tile"], keys["overlap"]) == ([96, 96, 64], [48, 48, 32])  # at most half a tile


def test_a_sigmoid_of_one_channel_is_a_two_class_mask(tmp_path):
    folder = write_bundle(tmp_path / "b")
    meta = metadata()
    meta["network_data_format"]["outputs"]["pred"].update(num_channels=1, channel_def={"0": "tumour"})
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    config = inference()
    config["postprocessing"]["transforms"][0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    keys = bundle_card(str(folder))
    assert (keys["outputs"], keys["classes"]) == ("sigmoid", ["background", "tumour"])


def test_spatial_shape_patterns_give_the_size_multiple():
    assert size_multiple(["32*n", "32*n", "16 * n"]) == 32
    assert size_multiple(["16*n", "n*24", 96]) == 48
    assert size_multiple([96, 96, 96]) is None and size_multiple(["2**p*n", "*"]) is None


# ---------------------------------------------------------------------------- refused, one line each

REFUSED = {
    "unknown transform": (
        [{"_target_": "HistogramNormalized", "keys": "image", "num_bins": 256}],
        ["HistogramNormalized", "normalize"],
    ),
    "nonzero z-score": (
        [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}],
        ["nonzero", "normalize"],
    ),
    "min-max scaling": ([{"_target_": "ScaleIntensityd", "keys": "image"}], ["minv, maxv", "normalize"]),
    "percentiles scaled": (
        [
            {
                "_target_": "ScaleIntensityRangePercentilesd",
                "keys": "image",
                "lower": 1,
                "upper": 99,
                "b_min": 0,
                "b_max": 1,
            }
        ],
        ["ScaleIntensityRangePercentilesd", "clip_percentiles", "normalize"],
    ),
    "anisotropic Spacingd before Orientationd": ([spacing([0.8, 0.8, 2.5]), RAS], ["per voxel axis", "spacing"]),
    "an expression in pixdim": ([RAS, spacing("$[1.5] * 3")], ["pixdim", "expression", "spacing"]),
    "a reference to nothing": ([RAS, spacing("@target_spacing")], ["@target_spacing", "spacing"]),
    "a soft clip": (
        [{"_target_": "ClipIntensityPercentilesd", "keys": "image", "upper": 95, "sharpness_factor": 10}],
        ["sharpness_factor", "normalize"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_gigaseg_cannot_run_is_one_line_naming_the_card_keys(tmp_path, untrained, case):
    transforms, words = REFUSED[case]
    folder = write_bundle(tmp_path / "b", inference([*preprocessing()[:2], *transforms]), net=untrained, files=("ts",))
    with pytest.raises(ModelError) as e:
        open_model(folder)
    assert "\n" not in str(e.value) and f"{folder}.card.json" in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_a_card_giving_the_keys_lifts_the_refusal(tmp_path, untrained):
    histogram = {"_target_": "HistogramNormalized", "keys": "image"}
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": "$[32] * 3", "mode": "gaussian"}
    config = inference([*preprocessing(), histogram], inferer=inferer)
    folder = write_bundle(tmp_path / "b", config, net=untrained, files=("ts",))
    steps = [{"clip": [0.0, 1.0]}]
    (tmp_path / "b.card.json").write_text(json.dumps({"normalize": steps}))
    with pytest.raises(ModelError, match="roi_size"):  # the sidecar gives normalize, not tile
        open_model(folder)
    loaded = open_model(folder, card={"tile": 32})
    assert loaded.card.normalize == steps and loaded.sources["normalize"] == f"{folder}.card.json"
    assert loaded.card.spacing == SPACING and (loaded.card.tile, loaded.card.overlap) == (32, 4)


def bad_bundle(tmp_path: Path, network: torch.nn.Module, case: str) -> tuple[Path, list[str]]:
    base = tmp_path / "bundle"
    if case == "no model file":
        return write_bundle(base), ["no network", "models/model.ts", "models/model.pt"]
    if case == "unknown transform":
        config = inference([*preprocessing(), {"_target_": "HistogramNormalized", "keys": "image"}])
        return write_bundle(base, config, net=network), ["HistogramNormalized", "normalize", "card"]
    if case == "expression in roi_size":
        config = inference(inferer={"_target_": "SlidingWindowInferer", "roi_size": "$[32] * 3", "overlap": 0.25})
        return write_bundle(base, config, net=network), ["inferer roi_size", "expression", "tile"]
    if case == "network outside the allow-list":
        config = inference(network_def={"_target_": "torch.nn.Identity"})
        return write_bundle(base, config, net=network, files=("pt",)), ["torch.nn.Identity", "model.ts"]
    config = inference(network_def={**NETWORK_DEF, "channels": [8, 16, 64]})  # weights that do not fit
    return write_bundle(base, config, net=network, files=("pt",)), ["model.pt", "do not fit", "UNet"]


BAD = ["no model file", "unknown transform", "expression in roi_size", "network outside the allow-list", "weights"]


@pytest.mark.parametrize("case", BAD)
def test_bad_bundles_are_one_line_and_create_nothing(tmp_path, untrained, small_volume, case):
    folder, words = bad_bundle(tmp_path, untrained, case)
    out = tmp_path / "out.zarr"
    one_error(run("segment", small_volume, "--model", folder, "--out", out, "--device", "cpu"), *words)
    assert not out.exists()

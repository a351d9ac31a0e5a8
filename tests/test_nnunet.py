"""nnU-Net v2 result folders as models, against nnU-Net's own predictor.

The result folder is made as nnU-Net makes it: plans.json and dataset.json as
nnUNetTrainer copies them, and each fold's checkpoint_final.pth written by
``nnUNetTrainer.save_checkpoint`` itself (where nnU-Net is installed; else the
same dict by hand). The loader needs only dynamic_network_architectures; the
comparison with ``nnUNetPredictor`` needs nnunetv2.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import gigaseg
import gigaseg.tiler.windows
from gigaseg.errors import GigasegWarning, ModelError
from gigaseg.models.card import ModelCard
from gigaseg.models.ensemble import Ensemble
from gigaseg.models.formats import open_model
from gigaseg.models.nnunet import is_nnunet, nnunet_card, nnunet_module

from .conftest import one_error, run, write_nifti

pytest.importorskip("dynamic_network_architectures")

DATASET = "Dataset001_Blobs"
CONFIGURATION = "3d_fullres"
RESULT = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
PATCH = [24, 32, 32]
# The model's axes: SimpleITK's (k, j, i) permuted by transpose_forward [2, 0, 1], i.e. the voxel axes i, k, j
# (nnU-Net puts the axis of the largest spacing first). A volume whose nibabel zooms are ZOOMS is at SPACING.
TRANSPOSE = [2, 0, 1]
SPACING = [1.5, 1.2, 1.2]
ZOOMS = (1.5, 1.2, 1.2)
SEEDS = {0: 1, 1: 4}  # the folds' seeds: with these every class wins on the test volumes
CT = {
    "max": 320.0,
    "mean": 90.0,
    "median": 85.0,
    "min": 20.0,
    "percentile_00_5": 30.0,
    "percentile_99_5": 260.0,
    "std": 55.0,
}


def architecture(**changes) -> dict:
    kwargs = {
        "n_stages": 3,
        "features_per_stage": [4, 8, 8],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {**kwargs, **changes},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def configuration(**changes) -> dict:
    """A 3d_fullres configuration as nnU-Net's ExperimentPlanner writes one, small."""
    return {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": PATCH,
        "median_image_size_in_voxels": [48, 40, 56],
        "spacing": SPACING,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": architecture(),
        "batch_dice": False,
        **changes,
    }


def make_plans() -> dict:
    return {
        "dataset_name": DATASET,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": SPACING,
        "original_median_shape_after_transp": [48, 40, 56],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": TRANSPOSE,
        "transpose_backward": [int(i) for i in np.argsort(TRANSPOSE)],
        "configurations": {CONFIGURATION: configuration()},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": CT},
    }


def make_dataset() -> dict:
    return {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }


def seeded_network(plans: dict, seed: int) -> torch.nn.Module:
    """The plans' network with seeded weights whose scores differ enough for every class to win somewhere."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kwargs = dict(plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"])
    kwargs |= {"conv_op": torch.nn.Conv3d, "norm_op": torch.nn.InstanceNorm3d, "nonlin": torch.nn.LeakyReLU}
    torch.manual_seed(seed)
    network = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=True, **kwargs)
    with torch.no_grad():
        network.decoder.seg_layers[-1].weight.mul_(6)
    return network


def save_checkpoint(root: Path, network: torch.nn.Module, plans: dict, dataset: dict, fold: int) -> None:
    """``checkpoint_final.pth`` as nnUNetTrainer.save_checkpoint writes it: by the trainer where nnU-Net is
    installed, else the same dict (weights, optimizer state, numpy scalars in its log) by hand."""
    file = root / "results" / DATASET / RESULT / f"fold_{fold}" / "checkpoint_final.pth"
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        torch.save(trainer_like_checkpoint(network, plans, dataset, fold), file)
        return
    with pytest.MonkeyPatch.context() as patch:
        trainer = nnunet_trainer(patch, root, plans, dataset, fold)
        trainer.network.load_state_dict(network.state_dict())
        trainer.logger.log("train_losses", np.float32(0.61), 0)
        trainer.logger.log("mean_fg_dice", np.float64(0.42), 0)
        trainer._best_ema = np.float64(0.42)
        trainer.save_checkpoint(str(file))


def nnunet_trainer(patch: pytest.MonkeyPatch, root: Path, plans: dict, dataset: dict, fold: int):
    """An initialised nnUNetTrainer whose output folder is ``root/results/DATASET/RESULT/fold_N``."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for name in ("raw", "preprocessed", "results"):
        patch.setenv(f"nnUNet_{name}", str(root / name))
    preprocessed = root / "preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    preprocessed.mkdir(parents=True, exist_ok=True)
    (preprocessed / "case.b2nd").touch()  # the trainer infers its dataset class from the files' ending
    with open(os.devnull, "w") as quiet, pytest.MonkeyPatch.context() as out:
        out.setattr(sys, "stdout", quiet)
        trainer = nnUNetTrainer(
            plans={**copy.deepcopy(plans), "continue_training": False},
            configuration=CONFIGURATION,
            fold=fold,
            dataset_json=dataset,
            device=torch.device("cpu"),
        )
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    return trainer


def trainer_like_checkpoint(network: torch.nn.Module, plans: dict, dataset: dict, fold: int) -> dict:
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"train_losses": [np.float32(0.61)], "mean_fg_dice": [np.float64(0.42)], "lrs": [0.01]},
        "_best_ema": np.float64(0.42),
        "current_epoch": 1,
        "init_args": {
            "plans": plans,
            "configuration": CONFIGURATION,
            "fold": fold,
            "dataset_json": dataset,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def make_result(root: Path, folds=(0, 1)) -> Path:
    """``root/results/DATASET/RESULT`` with plans.json, dataset.json and a seeded network per fold."""
    plans, dataset = make_plans(), make_dataset()
    folder = root / "results" / DATASET / RESULT
    for fold in folds:
        save_checkpoint(root, seeded_network(plans, seed=SEEDS[fold]), plans, dataset, fold)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return make_result(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture
def result(made, tmp_path) -> Path:
    """A copy of the made result folder, to change."""
    return Path(shutil.copytree(made, tmp_path / RESULT))


def edit_json(file: Path, change) -> None:
    values = json.loads(file.read_text())
    change(values)
    file.write_text(json.dumps(values))


def blobs(shape, zooms, *, seed: int = 3) -> np.ndarray:
    """CT-like smooth blobs (60 HU and up, nowhere 0), placed in millimetres: any voxel size shows one scene."""
    rng = np.random.default_rng(seed)
    mm = np.stack(np.meshgrid(*[np.arange(n) * z for n, z in zip(shape, zooms, strict=True)], indexing="ij"))
    extent = np.array([n * z for n, z in zip(shape, zooms, strict=True)])
    data = np.full(shape, 60.0)
    for _ in range(9):
        centre = rng.uniform(0, 1, 3) * extent
        radius, height = rng.uniform(6, 12), rng.uniform(60, 220)
        data += height * np.exp(-(((mm - centre[:, None, None, None]) ** 2).sum(0)) / (2 * radius**2))
    return data.astype(np.float32)


def volume(path: Path, shape, zooms) -> Path:
    return write_nifti(path, blobs(shape, zooms), np.diag([*zooms, 1.0]))


# ---------------------------------------------------------------------------- the card


def test_the_card_says_what_the_plans_say(result):
    card = nnunet_card(str(result), CONFIGURATION)
    assert card["arch"] == "nnunet:PlainConvUNet"
    assert (card["in_channels"], card["classes"], card["spatial_dims"]) == (1, ["background", "liver", "tumour"], 3)
    assert (card["tile"], card["overlap"], card["spacing"]) == (PATCH, [12, 16, 16], SPACING)
    assert card["axis_order"] == [0, 2, 1]  # model axes i, k, j
    assert card["normalize"] == [{"clip": [30.0, 260.0]}, {"mean": [90.0], "std": [55.0]}]
    assert (card["outputs"], card["folds"], card["size_multiple"]) == ("logits", ["fold_0", "fold_1"], 4)
    ModelCard.from_dict(card)  # valid as it stands


def test_a_dataset_folder_is_read_through_its_result_folder_of_the_configuration(result):
    dataset = result.parent
    assert is_nnunet(str(dataset)) and is_nnunet(str(result))
    assert nnunet_card(str(dataset), CONFIGURATION)["tile"] == PATCH
    with pytest.raises(ModelError, match="no nnU-Net result folder for 3d_lowres"):
        nnunet_card(str(dataset), "3d_lowres")


@pytest.mark.parametrize(
    ("schemes", "masks", "expected"),
    [
        (["ZScoreNormalization"], [False], [{"zscore": "volume"}]),
        (["NoNormalization"], [False], []),
        (["RGBTo01Normalization", "NoNormalization"], [False, False], [{"mean": [0.0, 0.0], "std": [255.0, 1.0]}]),
        (["CTNormalization"], [True], [{"clip": [30.0, 260.0]}, {"mean": [90.0], "std": [55.0]}]),
    ],
)
def test_normalization_schemes_as_steps(result, schemes, masks, expected):
    def change(plans):
        plans["configurations"][CONFIGURATION] |= {"normalization_schemes": schemes, "use_mask_for_norm": masks}
        plans["foreground_intensity_properties_per_channel"] = {str(c): CT for c in range(len(schemes))}

    edit_json(result / "plans.json", change)
    edit_json(result / "dataset.json", lambda d: d.update(channel_names={str(c): "x" for c in range(len(schemes))}))
    assert nnunet_card(str(result), CONFIGURATION)["normalize"] == expected


def test_ct_channels_with_their_own_windows_give_the_same_values():
    from gigaseg.models.intensity import fit_steps
    from gigaseg.models.nnunet import ct_steps

    other = {**CT, "percentile_00_5": -900.0, "percentile_99_5": 1500.0, "mean": 300.0, "std": 400.0}
    steps = ct_steps([CT, other])
    x = np.linspace(-1200, 2000, 64, dtype=np.float32)
    tiles = np.stack([x, x])[None].copy()
    got = fit_steps(steps, None, channels=2)(tiles)[0]
    for c, props in enumerate((CT, other)):
        clipped = np.clip(x, props["percentile_00_5"], props["percentile_99_5"])
        np.testing.assert_allclose(got[c], (clipped - props["mean"]) / props["std"], atol=1e-5)


def plans_change(change):
    return lambda plans: change(plans["configurations"][CONFIGURATION])


@pytest.mark.parametrize(
    ("file", "change", "words"),
    [
        ("dataset.json", lambda d: d["labels"].update(whole=[1, 2]), "region-based labels"),
        (
            "plans.json",
            plans_change(lambda c: c.update(patch_size=[32, 32], spacing=[1, 1])),
            "give configuration 3d_fullres",
        ),
        ("plans.json", plans_change(lambda c: c.update(normalization_schemes=["RescaleTo01Normalization"])), "min"),
        ("plans.json", plans_change(lambda c: c.update(normalization_schemes=["Mine"])), "unknown"),
        (
            "plans.json",
            plans_change(lambda c: c.update(normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[True])),
            "use_mask_for_norm",
        ),
        ("plans.json", plans_change(lambda c: c.update(previous_stage="3d_lowres")), "cascade"),
        (
            "plans.json",
            plans_change(lambda c: c["architecture"]["arch_kwargs"].update(nonlin="os.system")),
            "os.system",
        ),
        (
            "plans.json",
            plans_change(lambda c: c["architecture"].update(network_class_name="mypackage.nets.Evil")),
            "not one gigaseg builds",
        ),
        ("plans.json", lambda p: p.update(image_reader_writer="Tiff3DIO"), "Tiff3DIO"),
    ],
)
def test_what_gigaseg_cannot_run_as_nnunet_does_is_one_line(result, file, change, words):
    edit_json(result / file, change)
    with pytest.raises(ModelError, match=words) as caught:
        open_model(result)
    assert "\n" not in str(caught.value)


def test_readers_that_reorient_give_an_orientation(result):
    edit_json(result / "plans.json", lambda p: p.update(image_reader_writer="NibabelIOWithReorient"))
    card = nnunet_card(str(result), CONFIGURATION)
    assert card["orientation"] == "RSA" and "axis_order" not in card  # RAS, as (k, j, i), by [2, 0, 1]


# ---------------------------------------------------------------------------- the network


def test_one_fold_is_the_network_and_several_an_ensemble_of_logits(result):
    card = ModelCard.from_dict(nnunet_card(str(result), CONFIGURATION))
    both = nnunet_module(str(result), card)
    assert isinstance(both, Ensemble) and len(both.members) == 2 and both.outputs == "logits"
    for names in (["1"], ["fold_1"]):
        one = nnunet_module(str(result), ModelCard.from_dict({**card.to_dict(), "folds": names}))
        assert not isinstance(one, Ensemble) and not one.training
        x = torch.randn(1, 1, *PATCH)
        with torch.no_grad():
            scores = one(x)
            expected = both.members[1](x)
        assert isinstance(scores, torch.Tensor) and scores.shape == (1, 3, *PATCH)  # no deep supervision
        torch.testing.assert_close(scores, expected)
    loaded = open_model(result)  # the folds' logits averaged, as nnU-Net averages them
    assert loaded.format == "nnunet" and loaded.card.outputs == "logits" and loaded.module.average == "logits"


def test_a_checkpoint_written_under_numpy_1_loads(result):
    """numpy 1 pickles its scalars as numpy.core.multiarray.scalar, numpy 2 as numpy._core...: both allowed."""
    file = result / "fold_0" / "checkpoint_final.pth"
    with zipfile.ZipFile(file) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    pickled = next(name for name in entries if name.endswith("data.pkl"))
    assert b"numpy._core.multiarray\nscalar" in entries[pickled]
    entries[pickled] = entries[pickled].replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    card = ModelCard.from_dict({**nnunet_card(str(result), CONFIGURATION), "folds": ["0"]})
    nnunet_module(str(result), card)


def test_without_dynamic_network_architectures_one_line_says_what_to_install(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures", None)
    card = ModelCard.from_dict(nnunet_card(str(result), CONFIGURATION))
    with pytest.raises(ModelError, match=r"pip install 'gigaseg\[nnunet\]'"):
        nnunet_module(str(result), card)


class Opaque:
    """Anything a checkpoint should not need to unpickle."""


def bad_checkpoint(result: Path) -> list:
    weights = torch.load(result / "fold_1" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    torch.save({"network_weights": weights, "extra": Opaque()}, result / "fold_1" / "checkpoint_final.pth")
    return []


def no_checkpoints(result: Path) -> list:
    for file in result.glob("fold_*/checkpoint_final.pth"):
        file.rename(file.with_name("checkpoint_best.pth"))
    return []


def card_with_folds(result: Path) -> list:
    (result.parent / "folds.json").write_text(json.dumps({"folds": ["fold_0", "fold_3"]}))
    return ["--card", result.parent / "folds.json"]


@pytest.mark.parametrize(
    ("setup", "extra", "words"),
    [
        (no_checkpoints, [], ["has no fold holding checkpoint_final.pth"]),
        (lambda r: [], ["--configuration", "3d_lowres"], ["lacks 3d_lowres", "--configuration may be 3d_fullres"]),
        (card_with_folds, [], ["fold fold_3", "is missing", "fold_0, fold_1"]),
        (bad_checkpoint, [], ["needs tests.test_nnunet.Opaque to unpickle", "network_weights alone"]),
    ],
)
def test_bad_result_folders_are_one_line_and_nothing_is_created(result, tmp_path, setup, extra, words):
    scan = volume(tmp_path / "ct.nii.gz", (48, 40, 56), ZOOMS)
    options = setup(result) + extra
    outcome = run("segment", scan, "--model", result, "--out", tmp_path / "o.zarr", *options)
    one_error(outcome, *words)
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------------------- against nnUNetPredictor

# Volumes (nibabel's i, j, k) and their zooms. At the plans' spacing nothing is resampled: the model sees
# 48 x 56 x 40 (i, k, j), 3 x 3 x 2 tiles of PATCH. At 1 mm both resample to 37 x 37 x 40 and back.
CASES = {"the plans' spacing": ((48, 40, 56), ZOOMS), "1 mm": ((56, 48, 44), (1.0, 1.0, 1.0))}
# Volumes of one tile on the model's grid (24 x 32 x 32): no blending, so no choice of gigaseg's tiling counts.
ONE_TILE = {"the plans' spacing": ((24, 32, 32), ZOOMS), "1 mm": ((36, 38, 38), (1.0, 1.0, 1.0))}
FLOOR = 0.8  # below this, something gigaseg reads from the folder is wrong (axes, intensities, weights)


def nnunet_mask(result: Path, scan: Path, folds: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's own prediction on the CPU, no mirroring, half-tile steps: (i, j, k)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with open(os.devnull, "w") as quiet, pytest.MonkeyPatch.context() as out:
        out.setattr(sys, "stdout", quiet)
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=False,
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(result), use_folds=folds)
        image, properties = SimpleITKIO().read_images([str(scan)])
        mask = predictor.predict_single_npy_array(image, properties)
    return np.asarray(mask).transpose(2, 1, 0)  # SimpleITK's (k, j, i)


def gigaseg_mask(result: Path, scan: Path, out: Path, folds: tuple[int, ...]) -> np.ndarray:
    card = {"folds": [str(f) for f in folds]}
    gigaseg.segment(scan, result, out, gigaseg.SegmentOptions(device="cpu"), card=card)
    return zarr.open_group(str(out))["mask"][:].T  # the store is (k, j, i)


def agreement(result: Path, tmp_path: Path, case: tuple, folds: tuple[int, ...] = (0, 1)) -> float:
    """The share of voxels where gigaseg's mask is nnU-Net's, printed with nnU-Net's class shares."""
    pytest.importorskip("nnunetv2")
    shape, zooms = case
    scan = volume(tmp_path / "ct.nii.gz", shape, zooms)
    ours = gigaseg_mask(result, scan, tmp_path / "o.zarr", folds)
    theirs = nnunet_mask(result, scan, folds)
    assert ours.shape == theirs.shape == shape
    counts = np.bincount(theirs.ravel(), minlength=3) / theirs.size
    share = float((ours == theirs).mean())
    print(f"\n{shape} at {zooms} mm, folds {folds}: {share:.4f} of voxels agree (nnU-Net's classes {counts.round(3)})")
    assert (counts > 0.03).all(), counts  # every class wins somewhere: the comparison means something
    return share


@pytest.mark.slow
@pytest.mark.parametrize("case", ONE_TILE)
def test_on_one_tile_gigaseg_gives_nnunets_mask(made, tmp_path, case):
    """One fold, one tile: the axes, intensities, network and weights gigaseg reads are nnU-Net's. Off the
    plans' grid one random fold (whose InstanceNorm scores swing with any change of input) shows what is left
    of the resampling: nnU-Net normalises, then resamples with cubic splines; gigaseg resamples linearly,
    then normalises (measured 0.979; two folds over many tiles agree on 0.993, the test below)."""
    share = agreement(made, tmp_path, ONE_TILE[case], folds=(0,))
    assert share >= (0.99 if case == "the plans' spacing" else 0.97)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_gigaseg_agrees_with_nnunets_predictor(made, tmp_path, case):
    """Two folds, many tiles: nnU-Net's window, tile placement and mean of logits, on its grid and off it."""
    assert agreement(made, tmp_path, CASES[case]) >= 0.99


def test_a_fold_whose_training_has_not_finished_is_left_out_with_a_warning(result):
    (result / "fold_2").mkdir()
    (result / "fold_2" / "checkpoint_best.pth").write_bytes(b"")
    with pytest.warns(GigasegWarning, match="fold_2 hold no checkpoint_final.pth"):
        card = nnunet_card(str(result), CONFIGURATION)
    assert card["folds"] == ["fold_0", "fold_1"]


def test_a_result_folders_identity_is_its_plans_and_final_checkpoints(result):
    """What nnU-Net writes beside them (validation predictions, logs, best checkpoints) neither changes the
    model for --resume nor travels to a cluster's workers."""
    from gigaseg.models.formats import folder_files, model_sha256

    before = model_sha256(result)
    (result / "fold_0" / "validation").mkdir()
    (result / "fold_0" / "validation" / "case_000.nii.gz").write_bytes(b"x" * 1000)
    (result / "fold_0" / "checkpoint_best.pth").write_bytes(b"y")
    (result.parent / "inference_information.json").write_text("{}")
    assert model_sha256(result) == before
    assert [name for name, _ in folder_files(result)] == [
        "dataset.json",
        "fold_0/checkpoint_final.pth",
        "fold_1/checkpoint_final.pth",
        "plans.json",
    ]
    (result / "fold_1" / "checkpoint_final.pth").write_bytes((result / "fold_0" / "checkpoint_final.pth").read_bytes())
    assert model_sha256(result) != before

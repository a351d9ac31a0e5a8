"""Benchmark inputs, generated once into a data folder and reused: scenes, volumes, models.

Scenes are written window by window (``write_landcover_tiff``), so even a
20000 x 20000 scene never sits in memory. A file appears under its final name
only when complete, so an interrupted generation is redone, never half-used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gigaseg.io.generate import write_landcover_tiff
from gigaseg.models.checkpoint import init_checkpoint

DATA = Path(os.environ.get("GIGASEG_BENCH_DATA", Path(__file__).parent / "out" / "data"))
CLASSES = ["water", "vegetation", "built", "bare"]
# uint8 scenes: reflectance / 12 sits around 70 +- 30.
MEAN, STD = 70.0, 30.0

# The 2-D models of the benchmark: a single 1x1 convolution (costs almost nothing,
# so it exposes tiling, blending and I/O overhead) and a small U-Net.
MODELS_2D: dict[str, dict[str, Any]] = {
    "conv": {"arch": "conv"},
    "unet": {
        "arch": "unet",
        "encoder": "resnet18",
        "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    },
}


def scene(side: int, *, bands: int = 3, seed: int = 0, data: Path = DATA) -> Path:
    """A square uint8 land-cover GeoTIFF of ``side`` pixels, 512 x 512 internal tiles."""
    path = data / f"scene_{side}_{bands}b_u8_s{seed}.tif"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("partial_" + path.name)
        write_landcover_tiff(tmp, (side, side), seed=seed, bands=bands, dtype="uint8")
        os.replace(tmp, path)
    return path


def _checkpoint(path: Path, *, bands: int, classes: list[str], **card: Any) -> Path:
    """A seeded (1), untrained checkpoint for the benchmark's uint8 scenes, written once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        init_checkpoint(
            path, in_channels=bands, classes=classes, mean=[MEAN] * bands, std=[STD] * bands, seed=1, **card
        )
    return path


def model(name: str, *, tile: int = 512, overlap: int = 64, data: Path = DATA) -> Path:
    """A seeded, untrained 3-band, 4-class checkpoint of one of :data:`MODELS_2D`."""
    path = data / f"model_{name}_{tile}_{overlap}.pt"
    return _checkpoint(path, bands=3, classes=CLASSES, tile=tile, overlap=overlap, **MODELS_2D[name])


def tiled_scene(side: int, *, bands: int = 4, seed: int = 0, data: Path = DATA) -> Path:
    """A square uint8 scene of ``side`` pixels, DEFLATE, 512 x 512 internal tiles, written fast.

    For the GPU cases (16384^2 in seconds on many cores, where the land-cover
    generator takes minutes): classes as 64-pixel cells of a seeded random map,
    a band mean per class and pixel noise, so it compresses and decodes about
    as real 8-bit imagery does. Compression runs on every core (GDAL NUM_THREADS).
    """
    import rasterio
    from rasterio.transform import from_origin

    path = data / f"tiled_{side}_{bands}b_u8_s{seed}.tif"
    if path.exists():
        return path
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 4, (side // 64 + 1, side // 64 + 1))
    means = rng.integers(30, 220, (4, bands)).astype(np.int16)
    profile = {
        "driver": "GTiff",
        "height": side,
        "width": side,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000.0, 6000000.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "photometric": "minisblack",
        "interleave": "pixel",
        "num_threads": "all_cpus",
    }
    tmp = path.with_name("partial_" + path.name)
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, side, 2048):
            h = min(2048, side - row)
            classes = np.repeat(np.repeat(cells[row // 64 : (row + h) // 64 + 1], 64, 0), 64, 1)[:h, :side]
            noise = rng.integers(-12, 13, (bands, h, side), dtype=np.int16)
            image = np.clip(means[classes].transpose(2, 0, 1) + noise, 0, 255).astype(np.uint8)
            dst.write(image, window=rasterio.windows.Window(0, row, side, h))
    os.replace(tmp, path)
    return path


def volume(shape: tuple[int, int, int], *, seed: int = 0, data: Path = DATA) -> Path:
    """A CT-like int16 NIfTI volume of ``shape`` (i, j, k), 1 mm voxels.

    ``organ_volume`` renders the whole volume at once (its organs are placed in
    normalised coordinates), so generating the 512 x 512 x 400 volume takes a few
    GB once; the benchmark itself reads it through gigaseg's source.
    """
    import nibabel as nib

    from gigaseg.synthetic import organ_volume

    path = data / f"volume_{'x'.join(map(str, shape))}_s{seed}.nii"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        hu, _ = organ_volume(shape[::-1], seed=seed)  # (k, j, i)
        image = nib.Nifti1Image(np.rint(hu.T).astype(np.int16), np.eye(4))
        image.header.set_xyzt_units("mm", "sec")
        del hu
        tmp = path.with_name("partial_" + path.name)
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    return path


def gpu_model(name: str, *, data: Path = DATA) -> Path:
    """The GPU cases' 2-D models: the bundled land-cover U-Net, or a seeded smp U-Net
    with a ResNet-34 encoder, 4 bands and 8 classes (tile 512, overlap 64)."""
    if name == "bundled":
        from gigaseg.jobs.demo import BUNDLED_2D, bundled_model

        return Path(str(bundled_model(BUNDLED_2D)))
    path = data / "model_unet_resnet34_8c.pt"
    classes = [f"class{i}" for i in range(8)]
    return _checkpoint(path, bands=4, classes=classes, arch="unet", encoder="resnet34", tile=512, overlap=64)


def conv_model(classes: int, *, tile: int = 512, overlap: int = 64, data: Path = DATA) -> Path:
    """A seeded one-convolution checkpoint, 4 bands, ``classes`` classes."""
    path = data / f"model_conv4b_{classes}c_{tile}_{overlap}.pt"
    names = [f"class{i}" for i in range(classes)]
    return _checkpoint(path, bands=4, classes=names, arch="conv", tile=tile, overlap=overlap)


def model3d(
    arch: str, arch_kwargs: dict[str, Any], *, tile: int, overlap: int, classes: int = 4, data: Path = DATA
) -> Path:
    """A seeded, untrained 1-channel 3-D checkpoint for CT-like volumes (HU); 4 classes unless asked."""
    suffix = "" if classes == 4 else f"_{classes}c"
    path = data / f"model3d_{arch}_{tile}_{overlap}{suffix}.pt"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        init_checkpoint(
            path,
            arch=arch,
            in_channels=1,
            classes=["background", "organ1", "organ2", "organ3"] if classes == 4 else [f"c{i}" for i in range(classes)],
            tile=tile,
            overlap=overlap,
            spatial_dims=3,
            mean=[0.0],
            std=[300.0],
            seed=1,
            arch_kwargs=arch_kwargs,
        )
    return path


# The formats case 17 runs one network in (bench/cases.py, ``model_formats``): a gigaseg
# checkpoint, and what torch and ONNX export it to.
EXPORTED_FORMATS = ("checkpoint", "torchscript", "pt2", "onnx")


def exported_card(checkpoint: str | Path) -> dict[str, Any]:
    """What a card must say for an exported graph of ``checkpoint`` (which carries none):
    channels, classes, normalisation and tiling, the checkpoint's own values."""
    from gigaseg.models.checkpoint import read_checkpoint

    card = read_checkpoint(checkpoint)["card"]
    keys = ("in_channels", "classes", "mean", "std", "tile", "overlap")
    return {k: card[k] for k in keys}


def exported_models(name: str, *, tile: int = 512, overlap: int = 64, data: Path = DATA) -> dict[str, Path]:
    """The seeded checkpoint of :func:`model` and its exports (:func:`export`), by format."""
    checkpoint = model(name, tile=tile, overlap=overlap, data=data)
    return {"checkpoint": checkpoint, **{fmt: export(checkpoint, fmt, data=data) for fmt in EXPORTED_FORMATS[1:]}}


def export(checkpoint: Path, fmt: str, *, data: Path = DATA) -> Path:
    """``checkpoint``'s network exported to ``fmt`` on the CPU (as one exports a network on a
    laptop and runs it on a GPU node), written once into ``data``; it carries no card
    (:func:`exported_card` gives one):

    * ``torchscript``: ``torch.jit.trace`` on two tiles, ``torch.jit.save``;
    * ``pt2``: ``torch.export`` with dynamic batch, height and width (height and
      width in multiples of the network's stride), ``torch.export.save``;
    * ``onnx``: ``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``;
      it needs the ``onnx`` package), batch, height and width dynamic in the input
      and the output.
    """
    import torch

    from gigaseg.models.checkpoint import load_checkpoint
    from gigaseg.models.registry import output_stride

    suffix = {"torchscript": ".ts", "pt2": ".pt2", "onnx": ".onnx"}[fmt]
    path = data / f"export_{Path(checkpoint).stem.removeprefix('model_')}{suffix}"
    if path.exists():
        return path
    data.mkdir(parents=True, exist_ok=True)
    net, card = load_checkpoint(checkpoint)
    net = net.eval()
    tile = card.tile
    # Two tiles: a batch of one would make torch.export specialise the batch dimension to 1.
    x = torch.randn(2, card.in_channels, tile, tile, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name("partial_" + path.name)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, x), str(tmp))
        elif fmt == "pt2":
            stride = output_stride(net)
            n = torch.export.Dim("n", min=1, max=1024)
            h, w = torch.export.Dim("h", min=1, max=8192), torch.export.Dim("w", min=1, max=8192)
            program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: n, 2: stride * h, 3: stride * w}})
            torch.export.save(program, str(tmp))
        else:
            axes = {0: "n", 2: "h", 3: "w"}
            torch.onnx.export(
                net,
                (x,),
                str(tmp),
                dynamo=False,
                input_names=["x"],
                output_names=["scores"],
                dynamic_axes={"x": axes, "scores": axes},
            )
    os.replace(tmp, path)
    return path


def scan(shape: tuple[int, int, int], zooms: tuple[float, float, float], *, data: Path = DATA) -> Path:
    """A CT-like int16 NIfTI of ``shape`` (i, j, k) with voxels of ``zooms`` mm, written slab by slab.

    Smooth ellipsoid shells and a gradient (HU -1000..1000), so every class of a random network
    wins somewhere; cheap enough for 512 x 512 x 1000 (0.5 GB on disk)."""
    import nibabel as nib

    name = "x".join(map(str, shape)) + "_" + "x".join(f"{z:g}" for z in zooms)
    path = data / f"scan_{name}.nii"
    if path.exists():
        return path
    data.mkdir(parents=True, exist_ok=True)
    ni, nj, nk = shape
    image = nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), np.diag([*zooms, 1.0]))
    header = image.header.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    tmp = path.with_name("partial_" + path.name)
    i, j = np.meshgrid(np.linspace(-1, 1, ni), np.linspace(-1, 1, nj), indexing="ij")
    with open(tmp, "wb") as f:
        header.write_to(f)
        f.seek(int(header.get_data_offset()))
        for k in range(nk):  # Fortran order: a k slab is one run of bytes
            z = 2 * k / max(1, nk - 1) - 1
            r = np.sqrt(i**2 + j**2 + z**2)
            hu = 900 * np.cos(9 * r) - 300 * z + 40 * np.sin(23 * i * j)
            f.write(np.ascontiguousarray(np.rint(hu).astype(np.int16).T).tobytes())
    os.replace(tmp, path)
    return path


def nnunet_result(classes: int, *, spacing: float, patch: int, data: Path = DATA) -> Path:
    """An nnU-Net v2 result folder as nnU-Net writes one: plans.json (a small 3d_fullres PlainConvUNet,
    CT normalisation), dataset.json with ``classes`` labels and fold_0/checkpoint_final.pth, seeded."""
    import json

    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder = data / f"nnunet_{classes}c_{spacing:g}mm_p{patch}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if (folder / "fold_0" / "checkpoint_final.pth").exists():
        return folder
    kwargs = {
        "n_stages": 3,
        "features_per_stage": [8, 16, 32],
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin_kwargs": {"inplace": True},
    }
    names = {
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "nonlin": "torch.nn.LeakyReLU",
    }
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [patch] * 3,
        "median_image_size_in_voxels": [256, 256, 256],
        "spacing": [spacing] * 3,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {**kwargs, **names, "dropout_op": None},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    ct = {
        "max": 1000.0,
        "mean": 0.0,
        "median": 0.0,
        "min": -1000.0,
        "percentile_00_5": -900.0,
        "percentile_99_5": 900.0,
        "std": 500.0,
    }
    plans = {
        "dataset_name": "Dataset104_Bench",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [256, 256, 256],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": ct},
    }
    labels = {"background": 0, **{f"structure_{c}": c for c in range(1, classes)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    torch.manual_seed(0)
    network = PlainConvUNet(
        input_channels=1,
        num_classes=classes,
        deep_supervision=True,
        conv_op=torch.nn.Conv3d,
        norm_op=torch.nn.InstanceNorm3d,
        nonlin=torch.nn.LeakyReLU,
        **kwargs,
    )
    with torch.no_grad():
        network.decoder.seg_layers[-1].weight.mul_(6)  # many classes win somewhere
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 1,
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder

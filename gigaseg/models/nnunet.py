"""nnU-Net v2 result folders as models: ``plans.json``, ``dataset.json`` and ``fold_N/checkpoint_final.pth``.

A result folder (``<Trainer>__<Plans>__<configuration>``, or the dataset folder
above such folders) says everything gigaseg's card asks for, as nnU-Net's own
predictor reads it:

* the network: ``architecture.network_class_name`` of the configuration, built
  with ``dynamic_network_architectures`` from its ``arch_kwargs``; the layer
  classes those name (``conv_op``, ``norm_op``, ...) are looked up in an
  allow-list of ``torch.nn`` classes, never imported from a string;
* the weights: each fold's ``checkpoint_final.pth``, unpickled with
  ``weights_only`` and only the numpy globals nnU-Net's checkpoints hold
  (:data:`CHECKPOINT_GLOBALS`); several folds are one :class:`Ensemble`;
* the grid: ``patch_size`` is the tile, half of it the overlap (nnU-Net's step
  0.5), ``spacing`` the voxel size; nnU-Net reads NIfTI with SimpleITK, whose
  array is ``(k, j, i)``, then permutes it by ``transpose_forward``: model axis
  ``m`` shows voxel axis ``2 - transpose_forward[m]`` (``axis_order``);
* the intensities: ``CTNormalization`` is a clip to the foreground's 0.5 and
  99.5 percentiles and the foreground's mean and std, ``ZScoreNormalization``
  the volume's own mean and std, ``NoNormalization`` nothing,
  ``RGBTo01Normalization`` a division by 255.

Refused, one line each: region-based labels, cascade stages, 2-D
configurations, ``RescaleTo01Normalization`` (the volume's min and max: no step
says it), and z-scoring with ``use_mask_for_norm`` (nnU-Net normalises inside
the nonzero region only and leaves the outside 0; normalising every voxel would
show the network other values everywhere, not only outside).

Where gigaseg's path differs from nnU-Net's predictor (the mask may differ at
class borders): folds and overlapping tiles are averaged as probabilities
(nnU-Net averages logits, in float16), the last tile along an axis is flush
with the edge (nnU-Net spreads its tiles evenly), a volume is resampled
linearly (nnU-Net: third-order splines) and normalised after it (nnU-Net:
before), z-scores use the whole volume (nnU-Net: the box around its nonzero
voxels, outside which it writes background).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gigaseg.errors import GigasegWarning, ModelError
from gigaseg.models.card import ModelCard, json_object
from gigaseg.models.ensemble import Ensemble

DEFAULT_CONFIGURATION = "3d_fullres"
CHECKPOINT = "checkpoint_final.pth"  # what nnU-Net's predictor reads: the weights at the end of training
INSTALL = "pip install 'gigaseg[nnunet]'"
NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")  # in dynamic_network_architectures.architectures

# The torch.nn classes a plan's arch_kwargs may name (conv_op, norm_op, dropout_op, nonlin).
LAYERS = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "LeakyReLU",
    "ReLU",
    "PReLU",
    "ELU",
    "GELU",
    "SiLU",
    "Identity",
)

# How each reader nnU-Net may have trained with lays a NIfTI file's voxels out: as SimpleITK's (k, j, i)
# array ("axis_order"), or reoriented to RAS first and then as that array ("orientation").
READERS = {
    "SimpleITKIO": "axis_order",
    "NibabelIO": "axis_order",
    "NibabelIOWithReorient": "orientation",
    "SimpleITKIOWithReorient": "orientation",
}
FIXED = {"CTNormalization", "NoNormalization", "RGBTo01Normalization"}  # schemes with values that need no scene


def _scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return scalar


# The non-tensor globals in a checkpoint nnUNetTrainer.save_checkpoint writes, besides what weights_only
# allows anyway (OrderedDict, torch.device in init_args, _codecs.encode for bytes). Its "logging" and
# "_best_ema" hold numpy scalars (float32 losses, float64 Dice scores): numpy's scalar constructor (under
# numpy 2's and numpy 1's module names), the dtype it is given, and the float32 and float64 dtype classes
# whose state the unpickler sets.
CHECKPOINT_GLOBALS: list[Any] = [
    (_scalar(), "numpy._core.multiarray.scalar"),
    (_scalar(), "numpy.core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
]


# --------------------------------------------------------------------------- recognising


def is_nnunet(path: str) -> bool:
    """A result folder (plans.json and dataset.json), or a dataset folder holding result folders."""
    folder = Path(path)
    return _is_result(folder) or bool(_results_in(folder))


def _is_result(folder: Path) -> bool:
    return (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()


def _results_in(folder: Path) -> list[Path]:
    """The ``<Trainer>__<Plans>__<configuration>`` result folders in a dataset folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.count("__") == 2 and _is_result(p))


def result_folder(path: str, configuration: str) -> Path:
    """The result folder ``path`` is, or the one of ``configuration`` in the dataset folder ``path``."""
    folder = Path(path)
    if _is_result(folder):
        return folder
    results = _results_in(folder)
    chosen = [p for p in results if p.name.endswith(f"__{configuration}")]
    if len(chosen) == 1:
        return chosen[0]
    names = ", ".join(p.name for p in results)
    if not chosen:
        raise ModelError(
            f"{path} holds no nnU-Net result folder for {configuration} (it holds {names}); give configuration "
            "to pick another, or one result folder as the model",
            parameters=("configuration",),
        )
    raise ModelError(f"{path} holds several result folders for {configuration} ({names}); give one as the model")


# --------------------------------------------------------------------------- the card


def nnunet_card(path: str, configuration: str) -> dict[str, Any]:
    """The card keys of the result folder at ``path`` run as ``configuration``."""
    folder = result_folder(path, configuration)
    plans, dataset = _json(folder / "plans.json"), _json(folder / "dataset.json")
    name = trained_configuration(folder, plans, configuration)
    config = resolve_configuration(plans, name, folder)
    _check_runnable(config, name, plans, folder)
    channels = _channel_count(dataset, folder)
    patch = [int(v) for v in config["patch_size"]]
    layers(config, folder)  # refused here already, so that models inspect says it
    card: dict[str, Any] = {
        "arch": f"nnunet:{network_name(config, folder)}",
        "arch_kwargs": {"configuration": name},
        "in_channels": channels,
        "classes": class_names(dataset, folder),
        "spatial_dims": len(patch),
        "tile": patch,
        "overlap": [p // 2 for p in patch],
        "spacing": [float(v) for v in config["spacing"]],
        "normalize": normalize_steps(plans, config, channels, folder),
        "outputs": "logits",
        "folds": found_folds(folder),
        # nnU-Net's sliding window: its gaussian, tiles spread evenly, logits blended and averaged over folds
        "blend": "nnunet",
        "placement": "even",
        "merge": "logits",
    }
    card |= grid_keys(plans, folder)
    multiple = size_multiple(config)
    if multiple is not None and all(p % multiple == 0 for p in patch):
        card["size_multiple"] = multiple
    return card


def _json(file: Path) -> dict[str, Any]:
    return json_object(file, str(file))


def trained_configuration(folder: Path, plans: dict[str, Any], configuration: str) -> str:
    """The configuration the folder's weights were trained as: its name's last part says it.

    The plans hold every configuration of the dataset, the weights one: another
    configuration's patch and spacing would run them on a grid they never saw.
    gigaseg cannot tell the default from a configuration asked for by name, so
    the default gives way to the folder's own.
    """
    own = folder.name.rsplit("__", 1)[-1] if folder.name.count("__") == 2 else None
    known = plans.get("configurations")
    if own is None or not isinstance(known, dict) or own not in known or own == configuration:
        return configuration
    if configuration == DEFAULT_CONFIGURATION:
        return own
    if configuration not in known:
        return configuration  # resolve_configuration names the ones the plans have
    raise ModelError(
        f"{folder} holds {own} weights, not {configuration} ones: give configuration {own}, or the dataset "
        "folder above it",
        parameters=("configuration",),
    )


def resolve_configuration(plans: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    """The configuration's keys, with those it inherits (``inherits_from``) from others, as nnU-Net does."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        have = ", ".join(configurations or {}) if isinstance(configurations, dict) else "none"
        raise ModelError(
            f"{folder}/plans.json lacks {name}; configuration may be {have}", parameters=("configuration",)
        )
    resolved, parent, seen = dict(configurations[name]), configurations[name].get("inherits_from"), {name}
    while parent is not None:
        if parent in seen or parent not in configurations:
            raise ModelError(f"{folder}/plans.json: configuration {name} inherits from {parent}, which it cannot")
        seen.add(parent)
        resolved = {**configurations[parent], **resolved}
        parent = configurations[parent].get("inherits_from")
    return resolved


def _check_runnable(config: dict[str, Any], name: str, plans: dict[str, Any], folder: Path) -> None:
    """Refuse what gigaseg cannot run as nnU-Net does: older plans, cascade stages, 2-D configurations."""
    if "architecture" not in config:
        raise ModelError(
            f"{folder}/plans.json is of an older nnU-Net (no architecture in configuration {name}); "
            "run nnUNetv2_plan_experiment with a current nnU-Net to write it again"
        )
    if config.get("previous_stage"):
        raise ModelError(
            f"{name} of {folder} is a cascade stage: it takes the segmentation of {config['previous_stage']} "
            f"as input, which gigaseg does not make; give configuration {config['previous_stage']} or 3d_fullres",
            parameters=("configuration",),
        )
    patch = config.get("patch_size")
    if not isinstance(patch, list) or len(patch) not in (2, 3) or len(config.get("spacing", [])) != len(patch):
        raise ModelError(f"{folder}/plans.json: configuration {name} needs a patch_size and spacing of 3 numbers")
    if len(patch) == 2:
        three = [n for n, c in plans["configurations"].items() if len(c.get("patch_size", [0, 0, 0])) == 3]
        raise ModelError(
            f"{name} of {folder} is 2-D (nnU-Net runs it slice by slice, resampled in plane); gigaseg runs "
            f"nnU-Net's 3-D configurations: give configuration {' or '.join(three) or '3d_fullres'}",
            parameters=("configuration",),
        )


def _channel_count(dataset: dict[str, Any], folder: Path) -> int:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ModelError(f"{folder}/dataset.json names no input channels (channel_names)")
    return len(names)


def class_names(dataset: dict[str, Any], folder: Path) -> list[str]:
    """The labels by value, 0 first; the ignore label is no class. Regions (lists of labels) are refused."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f"{folder}/dataset.json has no labels")
    values: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, list):
            raise ModelError(
                f"{folder}/dataset.json has region-based labels ({name}: {value}): nnU-Net scores each region "
                "with a sigmoid, and gigaseg blends one class per voxel"
            )
        if name != "ignore":
            values[name] = int(value)
    ordered = sorted(values, key=values.__getitem__)
    if sorted(values.values()) != list(range(len(values))):
        raise ModelError(f"{folder}/dataset.json's labels must be 0, 1, 2, ... as nnU-Net needs; got {labels}")
    return ordered


def network_name(config: dict[str, Any], folder: Path) -> str:
    """The network's class name, one gigaseg builds from dynamic_network_architectures."""
    full = str(config["architecture"].get("network_class_name", ""))
    short = full.rsplit(".", 1)[-1]
    if not full.startswith("dynamic_network_architectures.") or short not in NETWORKS:
        raise ModelError(
            f"{folder}/plans.json's network {full!r} is not one gigaseg builds: "
            f"{', '.join(NETWORKS)} of dynamic_network_architectures"
        )
    return short


def found_folds(folder: Path) -> list[str]:
    """The fold folders holding a final checkpoint, as nnU-Net's predictor picks them: fold_all
    only when no numbered fold has one."""
    held = [p.parent.name for p in folder.glob(f"fold_*/{CHECKPOINT}")]
    numbered = sorted((f for f in held if f.removeprefix("fold_").isdigit()), key=lambda f: int(f[5:]))
    folds = numbered or [f for f in held if f == "fold_all"]
    if not folds:
        raise ModelError(
            f"{folder} has no fold holding {CHECKPOINT} (fold_0/{CHECKPOINT}, ...): training has not finished, "
            "and nnU-Net's predictor reads that file too"
        )
    unfinished = sorted(p.name for p in folder.glob("fold_*") if p.is_dir() and p.name not in held)
    if unfinished:
        warnings.warn(
            f"{folder}: {', '.join(unfinished)} hold no {CHECKPOINT} (training not finished) and are left out; "
            f"running {', '.join(folds)}",
            GigasegWarning,
            stacklevel=2,
        )
    return folds


def grid_keys(plans: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``axis_order`` (or ``orientation``, for readers that reorient to RAS) from the plans' reader and
    ``transpose_forward``."""
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    order = plans.get("transpose_forward", [0, 1, 2])
    if reader not in READERS:
        raise ModelError(
            f"{folder}/plans.json reads images with {reader}; gigaseg lays NIfTI voxels out as {', '.join(READERS)} do"
        )
    if sorted(order) != [0, 1, 2]:
        raise ModelError(f"{folder}/plans.json's transpose_forward {order} is not an order of 0, 1, 2")
    if READERS[reader] == "orientation":
        return {"orientation": "".join("RAS"[2 - t] for t in order)}
    return {"axis_order": [2 - t for t in order]}


def size_multiple(config: dict[str, Any]) -> int | None:
    """The network's stride product, where it is the same along every axis (the card's one number)."""
    strides = config["architecture"].get("arch_kwargs", {}).get("strides")
    if not isinstance(strides, list):
        return None
    dims = len(config["patch_size"])
    products = [1] * dims
    for stride in strides:
        steps = stride if isinstance(stride, list) else [stride] * dims
        products = [p * int(s) for p, s in zip(products, steps, strict=False)]
    return products[0] if len(set(products)) == 1 else None


# --------------------------------------------------------------------------- normalisation


def normalize_steps(plans: dict[str, Any], config: dict[str, Any], channels: int, folder: Path) -> list[dict[str, Any]]:
    """The configuration's normalization_schemes as gigaseg's steps, per channel."""
    schemes = list(config.get("normalization_schemes", []))
    masks = list(config.get("use_mask_for_norm", [False] * len(schemes)))
    if len(schemes) != channels:
        raise ModelError(f"{folder}/plans.json gives {len(schemes)} normalization_schemes for {channels} channels")
    _refuse_schemes(schemes, masks, folder)
    if set(schemes) == {"ZScoreNormalization"}:
        return [{"zscore": "volume"}]
    if set(schemes) == {"CTNormalization"}:
        return ct_steps(_intensities(plans, channels, folder))
    if set(schemes) <= FIXED - {"CTNormalization"}:
        divisors = [255.0 if s == "RGBTo01Normalization" else 1.0 for s in schemes]
        return [] if set(divisors) == {1.0} else [{"mean": [0.0] * channels, "std": divisors}]
    named = ", ".join(f"channel {c} {s}" for c, s in enumerate(schemes))
    raise ModelError(
        f"{folder}/plans.json normalises its channels differently ({named}); gigaseg's steps apply one scheme "
        "to every channel (CT windows, z-scores, fixed divisors)"
    )


def _refuse_schemes(schemes: list[str], masks: list[Any], folder: Path) -> None:
    for c, (scheme, masked) in enumerate(zip(schemes, masks, strict=False)):
        if scheme == "RescaleTo01Normalization":
            raise ModelError(
                f"{folder}/plans.json: channel {c} uses RescaleTo01Normalization (the volume's own min and max), "
                "which no normalize step says"
            )
        if scheme not in FIXED | {"ZScoreNormalization"}:
            raise ModelError(f"{folder}/plans.json: channel {c} uses normalization {scheme!r}, unknown to gigaseg")
        if scheme == "ZScoreNormalization" and masked:
            raise ModelError(
                f"{folder}/plans.json: channel {c} is z-scored with use_mask_for_norm: nnU-Net normalises only "
                "the nonzero region and leaves the outside 0, which gigaseg's steps (every voxel) cannot say"
            )


def _intensities(plans: dict[str, Any], channels: int, folder: Path) -> list[dict[str, float]]:
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
    found = [props.get(str(c)) for c in range(channels)]
    if not all(isinstance(p, dict) and all(isinstance(p.get(k), int | float) for k in keys) for p in found):
        raise ModelError(
            f"{folder}/plans.json lacks foreground_intensity_properties_per_channel ({', '.join(keys)}) "
            "for its CT channels"
        )
    return [{k: float(p[k]) for k in keys} for p in found if p is not None]


def ct_steps(channels: list[dict[str, float]]) -> list[dict[str, Any]]:
    """nnU-Net's CTNormalization: a clip to the foreground's percentiles, then its mean and std.

    A clip step has one window for all channels; channels with different
    windows are each mapped onto [0, 1] by their window, clipped there, and
    mapped to their mean and std: the same values, up to float rounding.
    """
    low = [c["percentile_00_5"] for c in channels]
    high = [c["percentile_99_5"] for c in channels]
    mean = [c["mean"] for c in channels]
    std = [max(c["std"], 1e-8) for c in channels]  # nnU-Net divides by max(std, eps)
    if len(set(low)) == 1 and len(set(high)) == 1:
        return [{"clip": [low[0], high[0]]}, {"mean": mean, "std": std}]
    width = [h - lo for lo, h in zip(low, high, strict=True)]
    return [
        {"mean": low, "std": width},
        {"clip": [0.0, 1.0]},
        {
            "scale": [w / s for w, s in zip(width, std, strict=True)],
            "offset": [(lo - m) / s for lo, m, s in zip(low, mean, std, strict=True)],
        },
    ]


# --------------------------------------------------------------------------- the network


def nnunet_module(path: str, card: ModelCard) -> nn.Module:
    """The network of the card's folds with their weights, in eval mode: one fold is the network,
    several an :class:`Ensemble` of them (their probabilities averaged)."""
    configuration = (card.arch_kwargs or {}).get("configuration", DEFAULT_CONFIGURATION)
    folder = result_folder(path, configuration)
    plans = _json(folder / "plans.json")
    config = resolve_configuration(plans, configuration, folder)
    _check_runnable(config, configuration, plans, folder)
    folds = [fold_folder(folder, name) for name in card.folds or found_folds(folder)]
    members = []
    for fold in folds:
        network = build_network(config, channels=card.in_channels, classes=card.num_classes, folder=folder)
        weights = fold_weights(fold / CHECKPOINT, configuration)
        _load(network, weights, fold / CHECKPOINT)
        members.append(network.eval())
    return members[0] if len(members) == 1 else Ensemble(members, outputs="logits")


def fold_folder(folder: Path, name: str) -> Path:
    """A fold as the card names it: ``fold_0``, ``0`` or ``all``; one line when it has no final checkpoint."""
    text = str(name).strip()
    fold = text if text.startswith("fold_") else f"fold_{text}"
    suffix = fold.removeprefix("fold_")
    if not (suffix.isdigit() or suffix == "all"):
        raise ModelError(f"fold {name!r}: name a fold as fold_0, 0 or all", parameters=("card",))
    fold = f"fold_{int(suffix)}" if suffix.isdigit() else fold
    if not (folder / fold / CHECKPOINT).is_file():
        have = ", ".join(sorted(p.parent.name for p in folder.glob(f"fold_*/{CHECKPOINT}"))) or "none"
        raise ModelError(
            f"fold {name} of {folder} is missing: no {folder / fold / CHECKPOINT} (folds with one: {have})",
            parameters=("card",),
        )
    return folder / fold


def build_network(config: dict[str, Any], *, channels: int, classes: int, folder: Path) -> nn.Module:
    """The configuration's network, deep supervision off (one output), from allow-listed classes only."""
    architecture = config["architecture"]
    name = network_name(config, folder)
    try:
        from dynamic_network_architectures.architectures import unet  # type: ignore[import-untyped, import-not-found]
    except ImportError:
        raise ModelError(f"nnU-Net result folders need dynamic_network_architectures: {INSTALL}") from None
    kwargs = dict(architecture.get("arch_kwargs") or {}) | layers(config, folder)
    kwargs["deep_supervision"] = False
    try:
        network = getattr(unet, name)(input_channels=channels, num_classes=classes, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as e:
        raise ModelError(f"{folder}/plans.json's arch_kwargs do not make a {name}: {e}") from None
    if hasattr(getattr(network, "decoder", None), "deep_supervision"):
        network.decoder.deep_supervision = False
    return network


def layers(config: dict[str, Any], folder: Path) -> dict[str, type[nn.Module] | None]:
    """The arch_kwargs nnU-Net imports by name (``_kw_requires_import``), as allow-listed classes."""
    architecture = config["architecture"]
    kwargs = architecture.get("arch_kwargs") or {}
    return {key: torch_layer(kwargs.get(key), key, folder) for key in architecture.get("_kw_requires_import") or []}


def torch_layer(value: Any, key: str, folder: Path) -> type[nn.Module] | None:
    """A plan's ``torch.nn.modules.conv.Conv3d`` (or ``torch.nn.Conv3d``) as the class, if allow-listed."""
    if value is None:
        return None
    text = str(value)
    short = text.rsplit(".", 1)[-1]
    layer = getattr(nn, short, None) if short in LAYERS else None
    if layer is None or text not in (f"torch.nn.{short}", f"{layer.__module__}.{short}"):
        raise ModelError(
            f"{folder}/plans.json's {key} {text!r} is not a layer gigaseg builds: torch.nn's {', '.join(LAYERS)}"
        )
    return layer  # type: ignore[no-any-return]


def fold_weights(file: Path, configuration: str) -> dict[str, torch.Tensor]:
    """A checkpoint's network_weights, unpickled with weights_only and :data:`CHECKPOINT_GLOBALS` alone."""
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            data = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(_unpickling_line(file, e)) from None
    except Exception as e:  # a damaged file fails in many ways (RuntimeError, EOFError, ...)
        raise ModelError(f"{file} is not a checkpoint torch can read: {type(e).__name__}: {_first(e)}") from None
    weights = data.get("network_weights") if isinstance(data, dict) else None
    if not isinstance(weights, dict):
        raise ModelError(f"{file} holds no network_weights, as nnUNetTrainer's checkpoints do")
    trained = (data.get("init_args") or {}).get("configuration") if isinstance(data.get("init_args"), dict) else None
    if isinstance(trained, str) and trained != configuration:
        raise ModelError(f"{file} holds weights of configuration {trained}, not {configuration}")
    return weights


def _unpickling_line(file: Path, error: Exception) -> str:
    found = re.search(r"GLOBAL (\S+)", str(error))
    what = found.group(1).rstrip(".,") if found else _first(error)
    return (
        f"{file} needs {what} to unpickle, beyond the tensors and numpy scalars of nnU-Net's checkpoints: "
        "loading it could run code; where you trust it, save its network_weights alone "
        "(torch.save({'network_weights': checkpoint['network_weights']}, path))"
    )


def _first(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def _load(network: nn.Module, weights: dict[str, Any], file: Path) -> None:
    """The weights into the network, all of them; names saved from a compiled or DDP network are bared."""
    bare = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in weights.items()}
    try:
        network.load_state_dict(bare, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ModelError(
            f"{file}'s weights do not fit the network plans.json describes ({lines[-1][:200] if lines else e}); "
            "a trainer with a network of its own is not one gigaseg builds"
        ) from None

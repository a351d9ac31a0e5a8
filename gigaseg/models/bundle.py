"""MONAI bundles as models: ``configs/metadata.json``, ``configs/inference.json`` and the network.

A bundle says in its configs most of what gigaseg's card asks for. The configs
are read as data (JSON or YAML): ``@key`` references are followed, ``$``
expressions are never evaluated, and nothing is instantiated but the network,
from an allow-list of MONAI network classes (:data:`NETWORKS`).

* ``metadata.json``, ``network_data_format``: input channels, classes (the
  output's channels, named by its ``channel_def``), spatial dimensions, and the
  size multiple that spatial shapes such as ``"32*n"`` state;
* ``inference.json`` (or ``.yaml``): the ``preprocessing`` transforms as card
  keys (:data:`PREPROCESSING`), the inferer's ``roi_size`` and ``overlap`` as
  ``tile`` and ``overlap``, the ``postprocessing`` activation as ``outputs``;
* the network: ``models/model.ts`` (TorchScript), else ``network_def`` with the
  weights of ``models/model.pt`` (loaded with ``weights_only``).

=============================  ==========================================================
transform                      card keys
=============================  ==========================================================
``Orientationd``               ``orientation`` (``axcodes``; ``as_closest_canonical``: RAS)
``Spacingd``                   ``spacing`` (``pixdim``, per model axis; one number: every axis)
``ScaleIntensityRanged``       ``normalize``: ``(x - a_min) / (a_max - a_min)``, then
                               ``* (b_max - b_min) + b_min``, then the clip to
                               ``[b_min, b_max]``: MONAI's arithmetic, in its order
``NormalizeIntensityd``        ``normalize``: ``zscore`` (or ``subtrahend``/``divisor`` as mean/std)
``ClipIntensityPercentilesd``  ``normalize``: ``clip_percentiles``
``ShiftIntensityd``            ``normalize``: ``scale`` 1 and ``offset``
``ScaleIntensityd``            ``normalize``: ``scale`` ``1 + factor`` (``minv``/``maxv``: refused)
``LoadImaged``, ``EnsureTyped`` and other transforms that change neither values nor
geometry (:data:`UNCHANGED`): nothing
=============================  ==========================================================

Anything else in the preprocessing, and any value gigaseg needs that is an
expression, is refused with one line naming the card keys that would replace
it. A card that gives those keys (``card``, or ``<bundle>.card.json`` beside the
bundle) lifts the refusal: the refusals are kept with the keys and checked
against the card in force when the network is made (:func:`bundle_module`).
Refused outright: a ``nonzero`` z-score (MONAI measures and normalises the
nonzero voxels only and leaves the others 0: no step says that), min-max
scaling (``ScaleIntensityd``'s ``minv``/``maxv``, ``ScaleIntensityRangePercentilesd``:
gigaseg's steps clip at percentiles but scale by fixed numbers), statistics
over all channels together for a network of several.

Where gigaseg's path differs from MONAI's (masks may differ at class borders):

* the model's grid: gigaseg's covers the input's extent (``round(n * s / m)``
  voxels, centres by ``align_corners=False``: ``Spacingd(scale_extent=True)``);
  MONAI's default keeps the first voxel's centre and steps ``m`` from it
  (``round((n - 1) * s / m) + 1`` voxels), up to half a model voxel apart;
* normalisation follows resampling in gigaseg, whatever the transforms' order,
  and statistics (z-scores, percentiles) come from a strided sample of the
  input's voxels, where MONAI measures the resampled volume;
* the mask is the argmax of the blended probabilities on the input's voxels
  (``Invertd``); other postprocessing (``KeepLargestConnectedComponentd``, ...)
  is not applied, with a warning; the inferer's blending mode is a run option
  (``blend``), not a card key: a ``constant`` mode is a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gigaseg.errors import GigasegWarning, ModelError
from gigaseg.models.card import ModelCard, json_object

CONFIGS = ("inference.json", "inference.yaml", "inference.yml")

# monai.networks.nets classes a network_def may name: segmentation networks whose forward gives one tensor.
NETWORKS = (
    "UNet",
    "BasicUNet",
    "DynUNet",
    "SegResNet",
    "SwinUNETR",
    "UNETR",
    "AttentionUnet",
    "VNet",
    "HighResNet",
    "FlexibleUNet",
    "MedNeXt",
)

# Transforms that change neither the voxels' values nor the grid: skipped without a word.
UNCHANGED = {
    "LoadImaged",
    "EnsureChannelFirstd",
    "AsChannelFirstd",
    "AddChanneld",
    "EnsureTyped",
    "ToTensord",
    "ToNumpyd",
    "CastToTyped",
    "ToDeviced",
    "Identityd",
    "CopyItemsd",
    "DeleteItemsd",
    "SelectItemsd",
    "ToMetaTensord",
}
DTYPED = {"EnsureTyped", "ToTensord", "ToNumpyd", "CastToTyped"}  # a dtype other than float changes values

# Postprocessing that gigaseg's mask already is (the argmax on the input's voxels) or that keeps it.
POSTPROCESSING = UNCHANGED | {"Activationsd", "AsDiscreted", "Invertd", "SaveImaged", "SqueezeDimd"}

INTENSITY = re.compile(r"Intensity|Normaliz|Histogram|Scale|Shift|Clip|Threshold|Contrast|Gamma")
GEOMETRY = re.compile(r"Spacing|Orientation|Resize|Zoom|Rotate|Flip|Affine|Resample|Transpose")

DEFAULT_LABELS = [["L", "R"], ["P", "A"], ["I", "S"]]  # Orientationd's axis labels, as a config writes them

Refusal = tuple[str, tuple[str, ...]]  # the line, and the card keys any of which replaces what it refuses


class Unresolved(Exception):
    """A config value that is an expression or a macro, or a reference to nothing: data cannot say it."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where} {what}")


@dataclass
class Config:
    """A config file's data; values are resolved as data: ``@key`` (``::`` or ``#`` for parts) followed."""

    data: dict[str, Any]

    def resolve(self, value: Any, where: str, depth: int = 0) -> Any:
        """``value`` with every reference in it followed; an expression or macro anywhere in it is refused."""
        if isinstance(value, str):
            return self._string(value, where, depth)
        if isinstance(value, list):
            return [self.resolve(v, where, depth) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v, where, depth) for k, v in value.items()}
        return value

    def follow(self, value: Any, where: str) -> Any:
        """``value``, or what the reference it is names (its own references left as they are)."""
        for _ in range(32):
            if not (isinstance(value, str) and value.startswith(("@", "$", "%"))):
                return value
            if not value.startswith("@"):
                raise Unresolved(where, f"is an expression ({_short(value)}) gigaseg does not evaluate")
            value = self.lookup(value, where)
        raise Unresolved(where, "is a loop of references")

    def lookup(self, reference: str, where: str) -> Any:
        node: Any = self.data
        for part in reference[1:].replace("#", "::").split("::"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise Unresolved(where, f"refers to {reference}, which the config does not hold")
        return node

    def _string(self, value: str, where: str, depth: int) -> Any:
        if value.startswith(("$", "%")):
            raise Unresolved(where, f"is an expression ({_short(value)}) gigaseg does not evaluate")
        if not value.startswith("@"):
            return value
        if depth > 32:
            raise Unresolved(where, "is a loop of references")
        return self.resolve(self.lookup(value, where), where, depth + 1)


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Transform:
    """One transform of a Compose: its name (``Spacingd``), where it stands, and its arguments."""

    name: str
    where: str
    args: dict[str, Any]
    config: Config

    def arg(self, key: str, default: Any = None) -> Any:
        return self.config.resolve(self.args.get(key, default), f"{self.where} {key}")

    def per_key(self, key: str, image: str, default: Any = None) -> Any:
        """An argument given per key (``mode: [bilinear, nearest]`` for ``keys: [image, label]``): the image's."""
        value = self.arg(key, default)
        keys = self.keys()
        if isinstance(value, list) and keys is not None and image in keys and len(value) == len(keys):
            return value[keys.index(image)]
        return value

    def keys(self) -> list[str] | None:
        try:
            keys = self.arg("keys")
        except Unresolved:
            return None
        return [keys] if isinstance(keys, str) else keys if isinstance(keys, list) else None


@dataclass
class Reading:
    """What a bundle's configs say as card keys, what gigaseg refuses of them, and what it warns about."""

    path: str
    keys: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] | None = field(default_factory=list)  # None once a transform is refused
    refusals: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    image: str = "image"  # the data key the network's input goes by (metadata's first input)
    oriented: bool = False  # an Orientationd came first: Spacingd's pixdim is per model axis
    voxel_spacing: list[float] | None = None  # a Spacingd before any Orientationd: per voxel axis

    def refuse(self, line: str, keys: tuple[str, ...]) -> None:
        given = " or ".join(keys)
        where = f"card or {self.path.rstrip('/')}.card.json"
        self.refusals.append((f"MONAI bundle {self.path}: {line}; give {given} in a card ({where})", keys))

    def warn(self, line: str) -> None:
        self.warnings.append(f"MONAI bundle {self.path}: {line}")

    @property
    def channels(self) -> int:
        return int(self.keys.get("in_channels", 1))

    @property
    def dims(self) -> int:
        return int(self.keys.get("spatial_dims", 3))


# --------------------------------------------------------------------------- the public hooks


def is_bundle(path: str) -> bool:
    """A folder with ``configs/metadata.json``."""
    return (Path(path) / "configs" / "metadata.json").is_file()


def bundle_card(path: str) -> dict[str, Any]:
    """The card keys a bundle's configs say; warns of what gigaseg does otherwise than MONAI."""
    reading = read_bundle(path)
    for line in reading.warnings:
        warnings.warn(line, GigasegWarning, stacklevel=3)
    return reading.keys


def bundle_module(path: str, card: ModelCard) -> nn.Module:
    """The bundle's network: ``models/model.ts``, else ``network_def`` with ``models/model.pt``.

    What the configs say that gigaseg refused is refused here, unless ``card``
    (the card in force) gives a key that replaces it.
    """
    reading = read_bundle(path)
    for line, keys in reading.refusals:
        if not any(_given(card, key, reading.keys) for key in keys):
            raise ModelError(line, parameters=("card",))
    models = Path(path) / "models"
    if (models / "model.ts").is_file():
        return _torchscript(models / "model.ts")
    if not (models / "model.pt").is_file():
        raise ModelError(f"MONAI bundle {path} has no network: neither models/model.ts nor models/model.pt")
    network = _network_def(path, _inference(path))
    _load_state(network, models / "model.pt")
    return network


def _given(card: ModelCard, key: str, own: dict[str, Any]) -> bool:
    """Whether the card in force gives ``key`` otherwise than the bundle's configs (or the default)."""
    if key == "normalize":
        return card.steps() != own.get("normalize", [])
    defaults = {f.name: f.default for f in dataclasses.fields(ModelCard)}
    return getattr(card, key) != own.get(key, defaults.get(key))


# --------------------------------------------------------------------------- reading the configs


def read_bundle(path: str) -> Reading:
    """The card keys of a bundle's metadata and inference config, and its refusals and warnings."""
    meta = _metadata(path)
    reading = Reading(path, image=_input_name(meta))
    reading.keys.update(_metadata_keys(path, meta))
    config = _inference(path)
    if config is None:
        reading.refuse("no configs/inference.json says its preprocessing and inferer", ("tile",))
        return reading
    _read_preprocessing(config, reading)
    _read_inferer(config, reading)
    _read_postprocessing(config, reading)
    return reading


def _metadata(path: str) -> dict[str, Any]:
    return json_object(Path(path) / "configs" / "metadata.json", f"MONAI bundle {path}: configs/metadata.json")


def _inference(path: str) -> Config | None:
    """``configs/inference.json`` (or ``.yaml``) as data; None where the bundle has none."""
    folder = Path(path) / "configs"
    file = next((folder / name for name in CONFIGS if (folder / name).is_file()), None)
    if file is None:
        return None
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else _yaml(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and YAMLError are ValueErrors here
        raise ModelError(f"MONAI bundle {path}: configs/{file.name} is not readable: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"MONAI bundle {path}: configs/{file.name} holds no mapping of keys")
    return Config(data)


def _yaml(text: str) -> Any:
    """YAML's safe loader: plain values only, no Python objects."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e).replace("\n", " ")) from None


def _metadata_keys(path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """in_channels, classes, spatial_dims, size_multiple and arch from ``network_data_format``."""
    data_format = meta.get("network_data_format") or {}
    image = _entry(data_format.get("inputs"), "image")
    pred = _entry(data_format.get("outputs"), "pred")
    keys: dict[str, Any] = {"arch": f"monai_bundle:{meta.get('name') or Path(path).name}"}
    if isinstance(image.get("num_channels"), int):
        keys["in_channels"] = image["num_channels"]
    shape = image.get("spatial_shape")
    if isinstance(shape, list) and shape:
        keys["spatial_dims"] = len(shape)
        if multiple := size_multiple(shape):
            keys["size_multiple"] = multiple
    if isinstance(pred.get("num_channels"), int):
        names = pred.get("channel_def") or {}
        keys["classes"] = [str(names.get(str(c), f"class_{c}")) for c in range(pred["num_channels"])]
    return keys


def _input_name(meta: dict[str, Any]) -> str:
    inputs = (meta.get("network_data_format") or {}).get("inputs")
    return "image" if not isinstance(inputs, dict) or not inputs or "image" in inputs else str(next(iter(inputs)))


def _entry(section: Any, name: str) -> dict[str, Any]:
    """``inputs.image`` / ``outputs.pred``, or the section's first entry where it names them otherwise."""
    if not isinstance(section, dict) or not section:
        return {}
    entry = section.get(name, next(iter(section.values())))
    return entry if isinstance(entry, dict) else {}


def size_multiple(shape: list[Any]) -> int | None:
    """The side every axis must be a multiple of, from patterns such as ``"32*n"`` (the least common
    multiple where axes differ); None where no axis states one."""
    multiples = []
    for side in shape:
        found = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*|\s*n\s*\*\s*(\d+)\s*", side) if isinstance(side, str) else None
        if found:
            multiples.append(int(found.group(1) or found.group(2)))
    return math.lcm(*multiples) if multiples and math.lcm(*multiples) > 1 else None


# --------------------------------------------------------------------------- preprocessing


def _read_preprocessing(config: Config, reading: Reading) -> None:
    try:
        transforms = _compose(config, "preprocessing")
    except Unresolved as e:
        reading.refuse(f"{e}", ("normalize", "spacing", "orientation"))
        reading.steps = None
        transforms = []
    for transform in transforms:
        if _applies(transform, reading.image):
            _read_transform(transform, reading)
    if reading.voxel_spacing is not None:
        spacing = reading.voxel_spacing
        reading.keys["spacing"] = spacing[0] if len(set(spacing)) == 1 else spacing
    if reading.steps:
        reading.keys["normalize"] = reading.steps


def _compose(config: Config, key: str) -> list[Transform]:
    """The transforms of ``config[key]`` (a Compose, or a list of transforms), references followed."""
    if key not in config.data:
        return []
    compose = config.follow(config.data[key], key)
    items = compose.get("transforms", []) if isinstance(compose, dict) else compose
    items = config.follow(items, f"{key} transforms")
    if not isinstance(items, list):
        raise Unresolved(f"{key} transforms", "is not a list of transforms")
    transforms = []
    for i, item in enumerate(items):
        where = f"{key} transform {i}"
        item = config.follow(item, where)
        if not isinstance(item, dict) or not isinstance(item.get("_target_"), str):
            raise Unresolved(where, "is not a transform with a _target_")
        target = config.follow(item["_target_"], f"{where} _target_")
        name = _canonical(str(target).rsplit(".", 1)[-1])
        if not _disabled(item, config, where):
            transforms.append(Transform(name, f"{where} ({name})", item, config))
    return transforms


def _canonical(name: str) -> str:
    """MONAI's aliases of a dictionary transform (``SpacingD``, ``SpacingDict``) as ``Spacingd``."""
    if name.endswith("Dict"):
        return name[:-4] + "d"
    return name[:-1] + "d" if name.endswith("D") else name


def _disabled(item: dict[str, Any], config: Config, where: str) -> bool:
    flag = config.resolve(item.get("_disabled_", False), f"{where} _disabled_")
    return flag is True or (isinstance(flag, str) and flag.lower() == "true")


def _applies(transform: Transform, image: str) -> bool:
    """Whether the transform acts on the image (a transform of labels only is none of gigaseg's business)."""
    keys = transform.keys()
    return keys is None or image in keys


def _read_transform(transform: Transform, reading: Reading) -> None:
    handler = PREPROCESSING.get(transform.name)
    if transform.name in UNCHANGED:
        if transform.name in DTYPED and not _float(transform):
            line = f"{transform.where} casts the image to {transform.args['dtype']}"
            _refuse(transform, reading, line, ("normalize",))
        return
    if handler is None:
        _refuse_unknown(transform, reading)
        return
    try:
        handler(transform, reading)
    except Unresolved as e:
        _refuse(transform, reading, f"{e}", _keys_for(transform.name))


def _float(transform: Transform) -> bool:
    """A dtype left as it is, or a float one (``float32``, ``$torch.float32``): read as text, never evaluated."""
    dtype = transform.args.get("dtype")
    return dtype is None or "float" in str(dtype).lower()


def _keys_for(name: str) -> tuple[str, ...]:
    """The card keys that replace a transform: its own, or those of its kind (intensities, geometry, other)."""
    if name in ("Orientationd", "Spacingd"):
        return ("orientation",) if name == "Orientationd" else ("spacing",)
    if INTENSITY.search(name):
        return ("normalize",)
    if GEOMETRY.search(name):
        return ("spacing", "orientation")
    return ("normalize", "spacing", "orientation")


def _refuse_unknown(transform: Transform, reading: Reading) -> None:
    keys = _keys_for(transform.name)
    _refuse(transform, reading, f"{transform.where} is not a transform gigaseg runs", keys)


def _refuse(transform: Transform, reading: Reading, line: str, keys: tuple[str, ...]) -> None:
    """Refuse a transform; once an intensity transform is refused, the card's normalize is wholly the user's."""
    reading.refuse(line, keys)
    if "normalize" in keys:
        reading.steps = None


def _add_steps(reading: Reading, *steps: dict[str, Any]) -> None:
    if reading.steps is not None:
        reading.steps.extend(steps)


def _number(transform: Transform, key: str, default: Any = None) -> float | None:
    value = transform.arg(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unresolved(f"{transform.where} {key}", f"is {value!r}, not a number")
    return float(value)


def _orientation(transform: Transform, reading: Reading) -> None:
    code = transform.arg("axcodes")
    if transform.arg("as_closest_canonical", False):
        code = "RAS"
    if transform.arg("labels") not in (None, DEFAULT_LABELS):
        raise Unresolved(f"{transform.where} labels", "names axes other than L-R, P-A, I-S")
    if not isinstance(code, str) or len(code) != reading.dims:
        raise Unresolved(f"{transform.where} axcodes", f"is {code!r}, not a code of {reading.dims} axes")
    reading.keys["orientation"] = code.upper()
    reading.oriented = True
    spacing = reading.voxel_spacing
    if spacing is not None and len(set(spacing)) > 1:  # per voxel axis, and the axes are permuted after
        reading.voxel_spacing = None
        line = f"{transform.where} follows Spacingd, whose pixdim {spacing} is per voxel axis of each input"
        reading.refuse(line + ", not per model axis", ("spacing",))


def _spacing(transform: Transform, reading: Reading) -> None:
    pixdim = transform.arg("pixdim")
    values = pixdim if isinstance(pixdim, list) else [pixdim]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise Unresolved(f"{transform.where} pixdim", f"is {pixdim!r}, not sizes in mm")
    if any(v <= 0 for v in values):
        raise Unresolved(f"{transform.where} pixdim", f"is {pixdim!r}: a size of 0 keeps each input's own")
    for key in ("min_pixdim", "max_pixdim"):
        if transform.arg(key) is not None:
            raise Unresolved(f"{transform.where} {key}", "resamples only some inputs")
    spacing = [float(v) for v in (values + values[-1:] * reading.dims)[: reading.dims]]
    _spacing_mode(transform, reading)
    if reading.oriented:
        reading.keys["spacing"] = spacing[0] if len(set(spacing)) == 1 else spacing
    else:
        reading.voxel_spacing = spacing


def _spacing_mode(transform: Transform, reading: Reading) -> None:
    """gigaseg resamples linearly, with edges replicated: another mode is a warning, not a refusal, since
    the model still sees its own grid."""
    mode = transform.per_key("mode", reading.image, "bilinear")
    if mode not in ("bilinear", "trilinear", "linear", 1):
        reading.warn(f"{transform.where} resamples with mode {mode!r}; gigaseg resamples linearly")
    if transform.arg("diagonal", False):
        reading.warn(f"{transform.where} removes a volume's rotation (diagonal); gigaseg keeps it")


def _scale_range(transform: Transform, reading: Reading) -> None:
    a_min, a_max = _number(transform, "a_min"), _number(transform, "a_max")
    b_min, b_max = _number(transform, "b_min"), _number(transform, "b_max")
    if a_min is None or a_max is None or not a_min < a_max:
        raise Unresolved(f"{transform.where} a_min, a_max", f"are {a_min}, {a_max}: no window low to high")
    steps: list[dict[str, Any]] = [{"mean": a_min, "std": a_max - a_min}]
    if b_min is not None and b_max is not None:
        if b_min == b_max:
            raise Unresolved(f"{transform.where} b_min, b_max", "are equal: every voxel one value")
        steps.append({"scale": b_max - b_min, "offset": b_min})
    if transform.arg("clip", False):
        if b_min is None or b_max is None or not b_min < b_max:
            raise Unresolved(f"{transform.where} clip", f"clips to [{b_min}, {b_max}], which is no range")
        steps.append({"clip": [b_min, b_max]})
    _add_steps(reading, *steps)


def _normalize(transform: Transform, reading: Reading) -> None:
    if transform.arg("nonzero", False):
        line = (
            f"{transform.where} normalises the nonzero voxels only and leaves the others 0 (nonzero), "
            "which no normalize step says"
        )
        _refuse(transform, reading, line, ("normalize",))
        return
    subtrahend, divisor = transform.arg("subtrahend"), transform.arg("divisor")
    if subtrahend is None and divisor is None:
        if _together(transform, reading, "measures the mean and std"):
            return
        _add_steps(reading, {"zscore": "volume"})
    elif subtrahend is not None and divisor is not None:
        divisor = [d or 1.0 for d in divisor] if isinstance(divisor, list) else divisor or 1.0  # MONAI's 0 -> 1
        _add_steps(reading, {"mean": subtrahend, "std": divisor})
    else:
        raise Unresolved(f"{transform.where} subtrahend, divisor", "gives one and measures the other")


def _together(transform: Transform, reading: Reading, what: str) -> bool:
    """Refuse statistics of several channels together (MONAI without channel_wise): gigaseg measures
    each channel on its own."""
    if reading.channels == 1 or transform.arg("channel_wise", False):
        return False
    line = f"{transform.where} {what} of all {reading.channels} channels together; gigaseg measures each channel"
    _refuse(transform, reading, line, ("normalize",))
    return True


def _clip_percentiles(transform: Transform, reading: Reading) -> None:
    lower, upper = _number(transform, "lower"), _number(transform, "upper")
    if transform.arg("sharpness_factor") is not None:
        raise Unresolved(f"{transform.where} sharpness_factor", "clips softly, which no normalize step says")
    if _together(transform, reading, "measures percentiles"):
        return
    _add_steps(reading, {"clip_percentiles": [0.0 if lower is None else lower, 100.0 if upper is None else upper]})


def _shift(transform: Transform, reading: Reading) -> None:
    offset = _number(transform, "offset")
    _add_steps(reading, {"scale": 1.0, "offset": offset})


def _scale(transform: Transform, reading: Reading) -> None:
    if transform.arg("minv", 0.0) is not None or transform.arg("maxv", 1.0) is not None:
        line = f"{transform.where} scales each volume's minimum and maximum (minv, maxv), which no step says"
        _refuse(transform, reading, line, ("normalize",))
        return
    factor = _number(transform, "factor")
    if factor is None:
        raise Unresolved(f"{transform.where} factor", "is not given, nor minv and maxv")
    _add_steps(reading, {"scale": 1.0 + factor, "offset": 0.0})


def _percentiles_range(transform: Transform, reading: Reading) -> None:
    line = (
        f"{transform.where} maps each volume's percentiles onto [b_min, b_max]; gigaseg's normalize steps clip "
        "at percentiles (clip_percentiles) but scale by fixed numbers"
    )
    _refuse(transform, reading, line, ("normalize",))


PREPROCESSING: dict[str, Callable[[Transform, Reading], None]] = {
    "Orientationd": _orientation,
    "Spacingd": _spacing,
    "ScaleIntensityRanged": _scale_range,
    "ScaleIntensityRangePercentilesd": _percentiles_range,
    "NormalizeIntensityd": _normalize,
    "ClipIntensityPercentilesd": _clip_percentiles,
    "ShiftIntensityd": _shift,
    "ScaleIntensityd": _scale,
}


# --------------------------------------------------------------------------- inferer and postprocessing


def _read_inferer(config: Config, reading: Reading) -> None:
    try:
        inferer = _component(config, "inferer")
        name = str(config.follow(inferer.get("_target_"), "inferer _target_")).rsplit(".", 1)[-1]
        if name not in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
            raise Unresolved(f"inferer {name}", "is not a sliding window gigaseg can tile by")
        roi = config.resolve(inferer.get("roi_size"), "inferer roi_size")
        tile = _sides(roi, reading.dims, "inferer roi_size")
    except Unresolved as e:
        reading.refuse(f"{e}", ("tile",))
        return
    reading.keys["tile"] = _one_or_list(tile)
    reading.keys["overlap"] = _one_or_list(_overlap(config, inferer, tile, reading))
    _blend(config, inferer, reading)


def _component(config: Config, key: str) -> dict[str, Any]:
    """``config[key]``, references followed: a mapping with a ``_target_``."""
    value = config.follow(config.data.get(key), key)
    if not isinstance(value, dict) or "_target_" not in value:
        raise Unresolved(key, "is missing, or is no component with a _target_")
    return value


def _sides(roi: Any, dims: int, where: str) -> list[int]:
    sides = [roi] * dims if isinstance(roi, int) else roi
    if not isinstance(sides, list) or len(sides) != dims or not all(isinstance(s, int) and s > 0 for s in sides):
        raise Unresolved(where, f"is {roi!r}, not {dims} positive sides")
    return sides


def _overlap(config: Config, inferer: dict[str, Any], tile: list[int], reading: Reading) -> list[int]:
    """MONAI's tiles step by ``int(roi * (1 - overlap))`` (at least 1): the overlap is what is left."""
    try:
        fraction = config.resolve(inferer.get("overlap", 0.25), "inferer overlap")
        fractions = fraction if isinstance(fraction, list) else [fraction] * len(tile)
        overlap = [t - max(1, int(t * (1 - float(f)))) for t, f in zip(tile, fractions, strict=True)]
    except (Unresolved, TypeError, ValueError) as e:
        reading.warn(f"{e}; tiles overlap by an eighth (give overlap in a card)")
        return [t // 8 for t in tile]
    if any(2 * o > t for o, t in zip(overlap, tile, strict=True)):
        reading.warn(f"inferer overlap {fraction} is more than half a tile; gigaseg overlaps tiles by half")
        overlap = [min(o, t // 2) for o, t in zip(overlap, tile, strict=True)]
    return overlap


def _blend(config: Config, inferer: dict[str, Any], reading: Reading) -> None:
    """The blending mode is a run option (blend), not a card key: only a difference is said."""
    try:
        mode = config.resolve(inferer.get("mode", "constant"), "inferer mode")
        sigma = config.resolve(inferer.get("sigma_scale", 0.125), "inferer sigma_scale")
    except Unresolved as e:
        reading.warn(f"{e}")
        return
    if mode == "constant":
        reading.warn("the inferer blends tiles with constant weights (mode constant): run with blend constant")
    elif mode == "gaussian" and sigma != 0.125:
        reading.warn(f"the inferer's gaussian has sigma_scale {sigma}; gigaseg's is 0.125 of the tile")


def _one_or_list(sides: list[int]) -> int | list[int]:
    return sides[0] if len(set(sides)) == 1 else sides


def _read_postprocessing(config: Config, reading: Reading) -> None:
    try:
        transforms = _compose(config, "postprocessing")
    except Unresolved as e:
        reading.warn(f"{e}; the mask is the argmax of the network's scores")
        return
    for transform in transforms:
        if transform.name == "Activationsd":
            _activation(transform, reading)
        elif transform.name not in POSTPROCESSING:
            reading.warn(f"{transform.where} is not applied: the mask is the argmax of the blended probabilities")


def _activation(transform: Transform, reading: Reading) -> None:
    """Activationsd in the postprocessing says the network gives raw scores: softmax -> logits, sigmoid on
    one channel -> sigmoid (a binary mask); sigmoids of several channels are labels that may overlap."""
    try:
        sigmoid = transform.arg("sigmoid", False) is True
    except Unresolved as e:
        reading.warn(f"{e}; the network's outputs are taken as logits")
        return
    classes = reading.keys.get("classes", [])
    if not sigmoid:
        return
    if len(classes) != 1:
        raise ModelError(
            f"MONAI bundle {reading.path}: {transform.where} takes a sigmoid of each of {len(classes)} channels "
            "(labels that may overlap); gigaseg's masks give each voxel one class"
        )
    reading.keys["outputs"] = "sigmoid"
    reading.keys["classes"] = ["background", classes[0]]


# --------------------------------------------------------------------------- the network


def _torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; gigaseg still reads it
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a damaged archive fails in many ways (RuntimeError, UnicodeDecodeError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path} is a TorchScript file torch {torch.__version__} cannot load: {first}") from None


def _network_def(path: str, config: Config | None) -> nn.Module:
    """``network_def``'s MONAI class (from :data:`NETWORKS`) made with the config's plain arguments."""
    if config is None or "network_def" not in config.data:
        raise ModelError(f"MONAI bundle {path} has models/model.pt but no network_def in configs/inference.json")
    try:
        spec = _component(config, "network_def")
        target = str(config.follow(spec["_target_"], "network_def _target_"))
        kwargs = {k: config.resolve(v, f"network_def {k}") for k, v in spec.items() if not k.startswith("_")}
    except Unresolved as e:
        raise ModelError(f"MONAI bundle {path}: {e}; export the network to models/model.ts instead") from None
    name = _network_class(path, target)
    if "pretrained" in kwargs:  # the bundle's weights replace them: never download any
        kwargs["pretrained"] = False
    import monai.networks.nets as nets  # imported here: MONAI is slow to import

    try:
        return getattr(nets, name)(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise ModelError(f"MONAI bundle {path}: network_def {name} cannot be made from its arguments: {e}") from None


def _network_class(path: str, target: str) -> str:
    module, _, name = target.rpartition(".")
    if name in NETWORKS and (module in ("", "monai.networks.nets") or module.startswith("monai.networks.nets.")):
        return name
    raise ModelError(
        f"MONAI bundle {path}: network_def {target} is not one of the MONAI networks gigaseg makes "
        f"({', '.join(NETWORKS)}); export the network to models/model.ts instead"
    )


def _load_state(network: nn.Module, file: Path) -> None:
    """The weights of ``file`` (``weights_only``; a state dict, or one under ``model`` or ``state_dict``)."""
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's unpickler fails on garbage in many ways
        from gigaseg.models.checkpoint import unreadable

        raise ModelError(unreadable(str(file), e)) from None
    state = _state_dict(data)
    if state is None:
        raise ModelError(f"{file} holds no state dict (nor one under model or state_dict)")
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ModelError(f"weights in {file} do not fit network_def {type(network).__name__}: {detail}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ModelError(
            f"weights in {file} do not fit network_def {type(network).__name__}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected keys, e.g. {example!r}"
        )


def _state_dict(data: Any) -> dict[str, Any] | None:
    for _ in range(3):
        if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return _unwrapped(data)
        data = data.get("model", data.get("state_dict")) if isinstance(data, dict) else None
    return None


def _unwrapped(state: dict[str, Any]) -> dict[str, Any]:
    """Weights saved from a DataParallel network (``module.`` before every name) as the network's own."""
    if all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state

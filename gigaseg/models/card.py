"""The model card: what a checkpoint's network expects and produces."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gigaseg.errors import ModelError, SourceError
from gigaseg.models.intensity import Normalizer, check_spec, check_steps, fit_steps, spec_steps
from gigaseg.tiler.grid import PLACEMENTS, tiling_problem
from gigaseg.tiler.windows import WINDOWS

MAX_SIZE = 1 << 16  # no tile side, channel or class count beyond this is meant


def _finite_numbers(values: Any) -> bool:
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return False
    return bool(np.isfinite(np.asarray(values, np.float64)).all())


# What the network's outputs are: raw scores (gigaseg applies the softmax), probabilities (the graph
# ends in a softmax: blended as they are), or one sigmoid channel (a binary mask: two classes).
OUTPUTS = ("logits", "probabilities", "sigmoid")


@dataclass
class ModelCard:
    """Architecture, inputs, outputs and provenance of a segmentation network."""

    arch: str
    in_channels: int
    classes: list[str]
    encoder: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    spatial_dims: int = 2
    band_names: list[str] | None = None
    colors: list[str] | None = None
    clip: list[float] | None = None  # [low, high] applied to every band before mean/std (CT windows)
    mean: list[float] | None = None
    std: list[float] | None = None
    tile: int | list[int] = 512  # one side, or one per model axis (nnU-Net's patch_size, MONAI's roi_size)
    overlap: int | list[int] = 64
    receptive_field: int | None = None
    intensity: dict[str, Any] | None = None
    outputs: str = "logits"
    input_size: int | None = None  # the only tile side the graph takes
    size_multiple: int | None = None  # tile sides must be a multiple of it
    normalize: list[dict[str, Any]] | None = None  # ordered steps (gigaseg.models.intensity.STEPS)
    spacing: float | list[float] | None = None  # mm per voxel the model was trained at, per model axis
    orientation: str | None = None  # the voxel axes the model sees, as an orientation code ("RAS")
    axis_order: list[int] | None = None  # without orientation: model axis m shows voxel axis i/j/k = 0/1/2
    resolution: float | list[float] | None = None  # CRS units per pixel the model was trained at ([x, y])
    folds: list[str] | None = None  # weight files of this network, averaged as probabilities
    blend: str | None = None  # the window the model's own inference blends tiles with (the run's default)
    merge: str | None = None  # what it blends: "probs" or "logits" (the run's default)
    placement: str | None = None  # where its tiles go: "edge" (gigaseg's) or "even" (nnU-Net's)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        if self.in_channels < 1:
            raise ModelError(f"model card: in_channels must be >= 1, got {self.in_channels}")
        if len(self.classes) < 1:
            raise ModelError("model card: at least one class is needed")
        for name in ("mean", "std", "band_names"):
            values = getattr(self, name)
            if values is not None and len(values) != self.in_channels:
                raise ModelError(f"model card: {name} has {len(values)} values but in_channels is {self.in_channels}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ModelError(f"model card: std must be positive, got {self.std}")
        if self.intensity is not None:
            check_spec(self.intensity)
        if self.clip is not None and (len(self.clip) != 2 or not self.clip[0] < self.clip[1]):
            raise ModelError(f"model card: clip must be [low, high] with low < high, got {self.clip}")
        if self.colors is not None and len(self.colors) != len(self.classes):
            raise ModelError(
                f"model card: {len(self.colors)} colors for {len(self.classes)} classes; give one per class"
            )
        if self.spatial_dims not in (2, 3):
            raise ModelError(f"model card: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for tile, overlap in zip(self.tile_shape(), self.overlap_shape(), strict=True):
            if problem := tiling_problem(tile, overlap):
                raise ModelError(f"model card: {problem}")
        self._check_graph_keys()
        check_grid_keys(self)

    def _check_types(self) -> None:
        """Each key of the type it must have, before any arithmetic on it: one line for each mistake."""
        for name in ("in_channels", "spatial_dims", "tile", "overlap", "input_size", "size_multiple"):
            value = getattr(self, name)
            if value is None and name in ("input_size", "size_multiple"):
                continue
            per_axis = name in ("tile", "overlap") and isinstance(value, list)
            for v in value if per_axis else [value]:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ModelError(f"model card: {name} must be a whole number, got {value!r}")
                if not -1 < v <= MAX_SIZE:
                    raise ModelError(f"model card: {name} must be between 0 and {MAX_SIZE}, got {value}")
            if per_axis and len(value) != self.spatial_dims:
                sides = f"{len(value)} sides for a model of spatial_dims {self.spatial_dims}"
                raise ModelError(f"model card: {name} {value} gives {sides}")
        for name in ("classes", "band_names", "colors"):
            values = getattr(self, name)
            if values is None:
                continue
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ModelError(f"model card: {name} must be a list of names, got {values!r}")
            if name != "colors" and len(set(values)) != len(values):
                raise ModelError(f"model card: {name} names one twice: {values}")
        for name in ("clip", "mean", "std"):
            values = getattr(self, name)
            if values is not None and not _finite_numbers(values):
                raise ModelError(f"model card: {name} must be a list of finite numbers, got {values!r}")
        field_ = self.receptive_field
        if field_ is not None and (isinstance(field_, bool) or not isinstance(field_, int) or field_ < 0):
            raise ModelError(f"model card: receptive_field must be a whole number of pixels, got {field_!r}")
        if self.encoder is not None and not isinstance(self.encoder, str):
            raise ModelError(f"model card: encoder must be a name, got {self.encoder!r}")
        if not isinstance(self.arch, str):
            raise ModelError(f"model card: arch must be a name, got {self.arch!r}")

    def _check_graph_keys(self) -> None:
        """The keys for other people's networks: outputs, input_size, size_multiple, normalize."""
        if self.outputs not in OUTPUTS:
            raise ModelError(f"model card: outputs must be one of {', '.join(OUTPUTS)}, got {self.outputs!r}")
        if self.outputs == "sigmoid" and self.num_classes != 2:
            raise ModelError(
                f"model card: outputs sigmoid is one channel, a binary mask of two classes (background first); "
                f"classes names {self.num_classes}"
            )
        for name in ("input_size", "size_multiple"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ModelError(f"model card: {name} must be positive, got {value}")
        if self.input_size is not None and set(self.tile_shape()) != {self.input_size}:
            raise ModelError(
                f"model card: tile {self.tile} contradicts input_size {self.input_size} (the only side the graph "
                "takes); leave tile out"
            )
        if self.size_multiple and any(t % self.size_multiple for t in self.tile_shape()):
            raise ModelError(f"model card: tile {self.tile} is not a multiple of size_multiple {self.size_multiple}")
        if self.normalize is not None:
            older = [k for k in ("clip", "mean", "std", "intensity") if getattr(self, k) is not None]
            if older:
                raise ModelError(
                    f"model card: normalize and {', '.join(older)} both say how to normalise; "
                    "keep normalize (the older keys are steps of it)"
                )
            check_steps(self.normalize, channels=self.in_channels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tile_shape(self) -> tuple[int, ...]:
        """The tile's side per model axis."""
        return _per_axis(self.tile, self.spatial_dims)

    def overlap_shape(self) -> tuple[int, ...]:
        """The overlap per model axis."""
        return _per_axis(self.overlap, self.spatial_dims)

    def grid_spacing(self) -> tuple[float, ...] | None:
        """The voxel size (mm, 3-D) or pixel size (CRS units, 2-D, ``(y, x)``) the model was trained at,
        per model axis; None where the card does not say."""
        if self.spacing is not None:
            return tuple(float(v) for v in _per_axis(self.spacing, self.spatial_dims))
        if self.resolution is not None:
            x, y = _per_axis(self.resolution, 2)
            return (float(y), float(x))
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"model card: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = [k for k in ("arch", "in_channels", "classes") if k not in values]
        if missing:
            raise ModelError(f"model card: missing keys {missing}")
        size = values.get("input_size")
        if isinstance(size, int) and "tile" not in values:  # the graph takes one side: tiles are that side
            values = {**values, "tile": size}
        tile = values.get("tile")
        if "overlap" not in values and isinstance(tile, int | list):  # an eighth of the tile (64 of 512)
            eighth = [t // 8 if isinstance(t, int) else t for t in tile] if isinstance(tile, list) else tile // 8
            values = {**values, "overlap": eighth}
        try:
            return cls(**values)
        except ModelError:
            raise
        except (TypeError, ValueError) as e:
            raise ModelError(f"model card: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> ModelCard:
        """A card written as JSON, e.g. to go with a plain state_dict trained elsewhere."""
        return cls.from_dict(read_card_json(path))

    def digest(self) -> str:
        """A short content hash of the card, for provenance."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def steps(self) -> list[dict[str, Any]]:
        """How inputs are normalised, as ordered steps: ``normalize``, or the older keys as steps.

        ``clip`` is ``{"clip": ...}``, ``mean``/``std`` ``{"mean": ..., "std": ...}``, and an
        ``intensity`` spec its window or percentiles, then its (or the card's, or the scene's) moments.
        """
        if self.normalize is not None:
            return list(self.normalize)
        if self.intensity is not None:
            return spec_steps(self.intensity, mean=self.mean, std=self.std)
        steps: list[dict[str, Any]] = [{"clip": list(self.clip)}] if self.clip is not None else []
        moments = {k: v for k, v in (("mean", self.mean), ("std", self.std)) if v is not None}
        return steps + ([moments] if moments else [])

    def normalize_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """The card's fixed steps, in place, on ``(N, C, ...)`` float32 tiles (see :meth:`normalizer`)."""
        return self.normalizer()(tiles)

    def normalizer(self) -> Normalizer:
        """The card's steps that need no scene, as a normaliser (numpy or torch tiles).

        Steps fitted on the scene (percentiles, its own moments) are fitted by
        ``gigaseg.jobs.volume.normalizer``; planning goes without them.
        """
        return fit_steps(self.steps(), None, channels=self.in_channels)


def _per_axis(value: Any, ndim: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * ndim


ORIENTATION_LETTERS = ("LR", "PA", "IS")


def check_grid_keys(card: ModelCard) -> None:
    """The keys of the grid a model was trained on: spacing, orientation, axis_order, resolution, folds."""
    for name in ("spacing", "resolution"):
        value = getattr(card, name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not _finite_numbers(values) or any(v <= 0 for v in values):
            raise ModelError(f"model card: {name} must be positive numbers, got {value!r}")
    if card.spacing is not None and isinstance(card.spacing, list) and len(card.spacing) != card.spatial_dims:
        raise ModelError(
            f"model card: spacing {card.spacing} gives {len(card.spacing)} sizes for a {card.spatial_dims}-D model"
        )
    if card.resolution is not None and isinstance(card.resolution, list) and len(card.resolution) != 2:
        raise ModelError(f"model card: resolution is one number or [x, y], got {card.resolution}")
    if card.spacing is not None and card.resolution is not None:
        raise ModelError("model card: spacing (mm, volumes) and resolution (CRS units, rasters) both given; keep one")
    if card.orientation is not None:
        code = card.orientation
        axes = [next((i for i, pair in enumerate(ORIENTATION_LETTERS) if c in pair), None) for c in str(code).upper()]
        if not isinstance(code, str) or len(code) != 3 or sorted(a for a in axes if a is not None) != [0, 1, 2]:
            raise ModelError(f"model card: orientation must be a code such as RAS or LPS, got {code!r}")
        if card.axis_order is not None:
            raise ModelError("model card: orientation and axis_order both say which axes the model sees; keep one")
    if card.axis_order is not None and sorted(card.axis_order) != [0, 1, 2]:
        raise ModelError(f"model card: axis_order must order the voxel axes 0, 1, 2 (i, j, k), got {card.axis_order!r}")
    for name, allowed in (("blend", WINDOWS), ("merge", ("probs", "logits")), ("placement", PLACEMENTS)):
        value = getattr(card, name)
        if value is not None and value not in allowed:
            raise ModelError(f"model card: {name} must be one of {', '.join(allowed)}, got {value!r}")
    if card.folds is not None and (
        not isinstance(card.folds, list) or not card.folds or not all(isinstance(f, str) and f for f in card.folds)
    ):
        raise ModelError(f"model card: folds must be a list of weight files, got {card.folds!r}")
    if card.folds is not None and len(set(card.folds)) != len(card.folds):
        raise ModelError(f"model card: folds names one twice: {card.folds}")


def read_card_json(path: str | Path) -> dict[str, Any]:
    """The JSON object of a card file (all keys or some, to merge over a model's own card)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SourceError(f"cannot read model card {path}: {e.strerror or e}") from None
    return parse_card(text, f"model card {path}")


def json_object(file: Path, where: str) -> dict[str, Any]:
    """The JSON object in ``file`` (a model folder's config); ``where`` names it in the one-line error."""
    try:
        values = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{where} is not readable JSON: {e}") from None
    if not isinstance(values, dict):
        raise ModelError(f"{where} must hold a JSON object, not a {type(values).__name__}")
    return values


def parse_card(text: str | bytes, where: str) -> dict[str, Any]:
    """A card's JSON object; ``where`` names it in the one-line error for anything else."""
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ModelError(f"{where} must hold a JSON object, not a {type(values).__name__}")
    return values

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
from gigaseg.models.intensity import Intensity, check_spec
from gigaseg.tiler.grid import tiling_problem


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
    tile: int = 512
    overlap: int = 64
    receptive_field: int | None = None
    intensity: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
        if problem := tiling_problem(self.tile, self.overlap):
            raise ModelError(f"model card: {problem}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

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
        try:
            return cls(**values)
        except TypeError as e:
            raise ModelError(f"model card: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> ModelCard:
        """A card written as JSON, e.g. to go with a plain state_dict trained elsewhere."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise SourceError(f"cannot read model card {path}: {e.strerror or e}") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"model card {path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ModelError(f"model card {path} must hold a JSON object, not a {type(values).__name__}")
        return cls.from_dict(values)

    def digest(self) -> str:
        """A short content hash of the card, for provenance."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def normalize(self, tiles: np.ndarray) -> np.ndarray:
        """``(clip(x) - mean) / std`` per band, in place, on ``(N, C, ...)`` float32 tiles.

        A card with an ``intensity`` spec is normalised by the spec instead, fitted
        on the scene (:mod:`gigaseg.models.intensity`, ``gigaseg.jobs.volume``).
        """
        return self.normalizer()(tiles)

    def normalizer(self) -> Intensity:
        """The card's plain ``clip``, ``mean`` and ``std`` as a normaliser (numpy or torch tiles)."""
        channels = self.in_channels
        low, high = (None, None) if self.clip is None else (np.full(channels, c, np.float64) for c in self.clip)
        mean = None if self.mean is None else np.asarray(self.mean, np.float64)
        std = None if self.std is None else np.asarray(self.std, np.float64)
        return Intensity(mean, std, low, high)

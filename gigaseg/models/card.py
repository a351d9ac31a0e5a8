"""The model card: what a checkpoint's network expects and produces."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gigaseg.errors import ModelError
from gigaseg.models.intensity import check_spec


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
        try:
            return cls(**values)
        except TypeError as e:
            raise ModelError(f"model card: {e}") from None

    def digest(self) -> str:
        """A short content hash of the card, for provenance."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def normalize(self, tiles: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` per band, in place, on ``(N, C, ...)`` float32 tiles.

        A card with an ``intensity`` spec is normalised by the spec instead, fitted
        on the scene (:mod:`gigaseg.models.intensity`, ``gigaseg.jobs.volume``).
        """
        shape = (1, -1) + (1,) * (tiles.ndim - 2)
        if self.mean is not None:
            tiles -= np.asarray(self.mean, np.float32).reshape(shape)
        if self.std is not None:
            tiles /= np.asarray(self.std, np.float32).reshape(shape)
        return tiles

"""The feature image of the bilateral kernel: which bands, and a robust stretch to 0-255.

The CRF's colour width (``srgb``) is defined on 8-bit RGB. Multiband and
non-uint8 imagery (reflectance x 10000, Hounsfield units) is therefore mapped
band by band from its ``[low, high]`` percentiles onto 0-255, with the same
limits for every block of a scene (computed once from a sample of windows), so
a pixel's feature does not depend on the block it is refined in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gigaseg.errors import InputError
from gigaseg.tiler import Box

RGB_NAMES = (("red", "r"), ("green", "g"), ("blue", "b"))
DEFAULT_PERCENTILES = (2.0, 98.0)


def feature_bands(
    selected: Sequence[int], *, band_names: Sequence[str] | None = None, explicit: Sequence[int] | None = None
) -> list[int]:
    """File bands (1-based) of the feature image.

    ``explicit`` wins; else the bands the model card names red, green and blue
    (``band_names`` follow the model's inputs, ``selected`` maps them to file
    bands); else the first three selected bands (all of them when fewer).
    """
    if explicit:
        return list(explicit)
    if band_names:
        lowered = [name.strip().lower() for name in band_names]
        picks = [next((i for i, n in enumerate(lowered) if n in names), None) for names in RGB_NAMES]
        found = [p for p in picks if p is not None]
        if len(found) == len(picks):
            return [selected[p] for p in found]
    return list(selected[:3])


@dataclass(frozen=True)
class Stretch:
    """Per-band limits mapped onto 0 and 255."""

    percentiles: tuple[float, float]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __call__(self, data: np.ndarray) -> np.ndarray:
        """``(C, *shape)`` pixels -> float32 features in [0, 255]; NaN becomes 0."""
        shape = (-1,) + (1,) * (data.ndim - 1)
        low = np.asarray(self.low, np.float32).reshape(shape)
        span = np.asarray(self.high, np.float32).reshape(shape) - low
        span[span <= 0] = 1.0
        out = (data.astype(np.float32) - low) * (np.float32(255) / span)
        return np.nan_to_num(np.clip(out, 0, 255), nan=0.0)

    def describe(self) -> dict[str, list[float]]:
        return {"percentiles": list(self.percentiles), "low": list(self.low), "high": list(self.high)}


def fit_stretch(samples: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> Stretch:
    """Limits from ``(C, N)`` sample pixels (valid ones only)."""
    lo, hi = percentiles
    if not 0 <= lo < hi <= 100:
        raise InputError(f"stretch percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if samples.shape[1] == 0:
        zeros = (0.0,) * samples.shape[0]
        return Stretch((lo, hi), zeros, (255.0,) * samples.shape[0])
    low, high = np.percentile(samples.astype(np.float64), [lo, hi], axis=1)
    return Stretch((lo, hi), tuple(map(float, low)), tuple(map(float, high)))


def sample_boxes(shape: tuple[int, ...], *, windows: int = 64, side: int | None = None) -> list[Box]:
    """About ``windows`` evenly spread boxes of ``side`` pixels (256 in 2-D, 64 in 3-D)."""
    side = side or (256 if len(shape) == 2 else 64)
    per_axis = max(1, round(windows ** (1 / len(shape))))
    axes = []
    for n in shape:
        s = min(side, n)
        count = min(per_axis, math.ceil(n / s))
        starts = sorted({round(i * (n - s) / max(1, count - 1)) for i in range(count)})
        axes.append([(a, a + s) for a in starts])
    return [Box(tuple(a for a, _ in c), tuple(b for _, b in c)) for c in itertools.product(*axes)]


def sample_stretch(
    read: Callable[[Box], tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, ...],
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> Stretch:
    """Fit the stretch on a sample of windows read through ``read(box) -> (data, valid)``."""
    parts = []
    for box in sample_boxes(shape):
        data, valid = read(box)
        parts.append(data[:, valid])
    return fit_stretch(np.concatenate(parts, axis=1), percentiles)

"""Intensity normalisation from the model card: clip to a range, then z-score, per channel.

The card's ``intensity`` spec names a mode and its parameters::

    {"mode": "ct", "window": [-160, 240], "mean": 40, "std": 80}   # fixed window (CT, HU)
    {"mode": "percentile", "low": 0.5, "high": 99.5}               # MRI: clip at the volume's percentiles
    {"mode": "zscore"}                                              # the volume's own mean and std

``mean`` and ``std`` come from the spec, else from the card's ``mean``/``std``,
else from the scene itself (after clipping), measured on a strided sample of
its valid pixels that the caller reads (see ``gigaseg.io.sources.sample_voxels``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gigaseg.errors import ModelError

Spec = dict[str, Any]
Bounds = tuple[np.ndarray, np.ndarray] | None


def window_bounds(spec: Spec, sample: np.ndarray | None) -> Bounds:
    low, high = spec["window"]
    return np.array([low], np.float64), np.array([high], np.float64)


def percentile_bounds(spec: Spec, sample: np.ndarray | None) -> Bounds:
    values = _checked(sample)
    low = np.percentile(values, spec.get("low", 0.5), axis=1)
    high = np.percentile(values, spec.get("high", 99.5), axis=1)
    return low, high


def no_bounds(spec: Spec, sample: np.ndarray | None) -> Bounds:
    return None


MODES: dict[str, Callable[[Spec, np.ndarray | None], Bounds]] = {
    "ct": window_bounds,
    "percentile": percentile_bounds,
    "zscore": no_bounds,
}
KEYS = {"ct": {"window"}, "percentile": {"low", "high"}, "zscore": set()}


@dataclass(frozen=True)
class Intensity:
    """Per-channel ``clip(x, low, high)`` then ``(x - mean) / std``; each step only where given.

    Works in place on ``(N, C, ...)`` float32 tiles, numpy arrays or torch tensors
    on any device: the pipeline normalises raw pixels on the model's device.
    """

    mean: np.ndarray | None
    std: np.ndarray | None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __call__(self, tiles: Any) -> Any:
        """Normalise ``(N, C, ...)`` float32 tiles in place (a numpy array or a torch tensor)."""
        if isinstance(tiles, np.ndarray):
            return self._numpy(tiles)
        return self._torch(tiles)

    def _numpy(self, tiles: np.ndarray) -> np.ndarray:
        if self.low is not None and self.high is not None:
            shape = (1, -1) + (1,) * (tiles.ndim - 2)
            np.clip(tiles, self.low.reshape(shape), self.high.reshape(shape), out=tiles)
        if self.mean is not None:
            per_band(np.subtract, tiles, self.mean)
        if self.std is not None:
            per_band(np.divide, tiles, self.std)
        return tiles

    def _torch(self, tiles: Any) -> Any:
        """The same arithmetic (float32 bounds, mean and std) with torch, on the tiles' device.

        Tiles laid out channels-last (2-D batches) are seen as rows of ``width x
        channels`` values, with each per-channel vector repeated along the row:
        one contiguous pass, where broadcasting a 4-element vector along the
        innermost loop is about 6 x slower on the CPU.
        """
        import torch

        rows, repeat = tiles, None
        if tiles.ndim == 4 and tiles.is_contiguous(memory_format=torch.channels_last):
            n, c, h, w = tiles.shape
            rows, repeat = tiles.permute(0, 2, 3, 1).reshape(n * h, w * c), w

        def vector(values: np.ndarray) -> Any:
            return _vector(tuple(float(v) for v in values), str(tiles.device), repeat or 0, tiles.ndim)

        if self.low is not None and self.high is not None:
            rows.clamp_(min=vector(self.low), max=vector(self.high))
        if self.mean is not None:
            rows.sub_(vector(self.mean))
        if self.std is not None:
            rows.div_(vector(self.std))
        return tiles

    def describe(self) -> dict[str, Any]:
        values = {"mean": self.mean, "std": self.std, "low": self.low, "high": self.high}
        return {k: None if v is None else [float(x) for x in v] for k, v in values.items()}


@functools.lru_cache(maxsize=256)
def _vector(values: tuple[float, ...], device: str, repeat: int, ndim: int) -> Any:
    """Per-channel values as a float32 tensor on ``device``, shaped to broadcast (or repeated
    ``repeat`` times along a row); made once: a copy to a GPU per batch would wait for the GPU."""
    import torch

    v = torch.tensor(values, dtype=torch.float32, device=device)
    return v.repeat(repeat) if repeat else v.view(1, -1, *(1,) * (ndim - 2))


def per_band(op: np.ufunc, tiles: np.ndarray, values: Any) -> None:
    """``op(tiles[:, c], values[c])`` in place for every band ``c`` of ``(N, C, ...)`` tiles.

    Tiles laid out channels-last in memory (as the pipeline reads them) would make
    numpy broadcast a 3-element vector along its innermost loop, about 5 x slower
    than a contiguous pass: there the values are repeated along the last axis
    instead, so each row is one contiguous loop. Same arithmetic, same bits.
    """
    values = np.asarray(values, np.float32)
    interleaved = np.moveaxis(tiles, 1, -1)
    if tiles.ndim > 2 and interleaved.flags.c_contiguous:
        rows = interleaved.reshape(-1, interleaved.shape[-2] * interleaved.shape[-1])
        op(rows, np.tile(values, interleaved.shape[-2]), out=rows)
    else:
        op(tiles, values.reshape((1, -1) + (1,) * (tiles.ndim - 2)), out=tiles)


def check_spec(spec: Any) -> None:
    """Refuse a spec with an unknown mode, unknown keys or impossible values."""
    if not isinstance(spec, dict) or spec.get("mode") not in MODES:
        raise ModelError(f"model card: intensity needs a mode, one of {sorted(MODES)}; got {spec!r}")
    mode = spec["mode"]
    unknown = sorted(set(spec) - KEYS[mode] - {"mode", "mean", "std"})
    if unknown:
        raise ModelError(f"model card: intensity mode {mode!r} takes no {unknown}")
    if mode == "ct" and not _increasing(spec.get("window"), -np.inf, np.inf):
        raise ModelError(f"model card: the ct mode needs a window [low, high], got {spec.get('window')!r}")
    if mode == "percentile" and not _increasing([spec.get("low", 0.5), spec.get("high", 99.5)], 0, 100):
        raise ModelError(f"model card: percentiles must satisfy 0 <= low < high <= 100, got {spec}")
    if any(s <= 0 for s in np.atleast_1d(spec.get("std", 1.0))):
        raise ModelError(f"model card: intensity std must be positive, got {spec['std']}")


def _increasing(pair: Any, low: float, high: float) -> bool:
    try:
        a, b = (float(v) for v in pair)
    except (TypeError, ValueError):
        return False
    return low <= a < b <= high


def needs_sample(spec: Spec, *, mean: Any = None, std: Any = None) -> bool:
    """Whether fitting ``spec`` needs pixels of the scene."""
    given = "mean" in spec and "std" in spec or mean is not None and std is not None
    return spec["mode"] == "percentile" or not given


def fit_intensity(
    spec: Spec, sample: np.ndarray | None, *, channels: int, mean: Any = None, std: Any = None
) -> Intensity:
    """The normaliser for ``channels`` model inputs.

    ``sample`` is ``(c, n)`` pixels of the scene's ``c`` channels; when the model
    takes more (2.5-D context stacks neighbouring slices), each scene channel's
    statistics repeat over its block of ``channels // c`` model channels.
    """
    bounds = MODES[spec["mode"]](spec, sample)
    if "mean" in spec and "std" in spec:
        mean, std = spec["mean"], spec["std"]
    if mean is None or std is None:
        mean, std = _moments(_clip(sample, bounds))
    low, high = (None, None) if bounds is None else bounds
    return Intensity(
        mean=_per_channel(mean, channels),
        std=np.maximum(_per_channel(std, channels), 1e-6),
        low=None if low is None else _per_channel(low, channels),
        high=None if high is None else _per_channel(high, channels),
    )


def _checked(sample: np.ndarray | None) -> np.ndarray:
    if sample is None or sample.shape[1] == 0:
        raise ModelError("cannot measure intensities: the scene has no valid pixels")
    return sample


def _clip(sample: np.ndarray | None, bounds: Bounds) -> np.ndarray:
    values = _checked(sample)
    if bounds is None:
        return values
    return np.clip(values, bounds[0][:, None], bounds[1][:, None])


def _moments(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = sample.astype(np.float64)
    std = values.std(axis=1)
    return values.mean(axis=1), np.where(std > 0, std, 1.0)


def _per_channel(values: Any, channels: int) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, np.float64))
    if channels % len(array):
        raise ModelError(f"intensity values {array.tolist()} do not fit a model with {channels} channels")
    return np.repeat(array, channels // len(array))

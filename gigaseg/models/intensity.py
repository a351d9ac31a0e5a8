"""Intensity normalisation from the model card: ordered steps, fitted on the scene where they measure it.

The card's ``normalize`` is a list of steps (:data:`STEPS`): ``clip``,
``clip_percentiles``, ``zscore``, ``mean``/``std``, ``scale``/``offset``,
``divide``. The older ``intensity`` spec names a mode and its parameters, and
is the same steps (:func:`spec_steps`)::

    {"mode": "ct", "window": [-160, 240], "mean": 40, "std": 80}   # fixed window (CT, HU)
    {"mode": "percentile", "low": 0.5, "high": 99.5}               # MRI: clip at the volume's percentiles
    {"mode": "zscore"}                                              # the volume's own mean and std

Statistics of the scene are measured on a strided sample of its valid pixels
that the caller reads (see ``gigaseg.io.sources.sample_voxels``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from gigaseg.errors import ModelError

Spec = dict[str, Any]

KEYS = {"ct": {"window"}, "percentile": {"low", "high"}, "zscore": set()}  # mode -> its keys
MODES = tuple(KEYS)


@dataclass(frozen=True)
class Intensity:
    """Per-channel ``clip(x, low, high)``, ``(x - mean) / std``, then ``x * scale + offset``; each only where given.

    Works in place on ``(N, C, ...)`` float32 tiles, numpy arrays or torch tensors
    on any device: the pipeline normalises raw pixels on the model's device.
    """

    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None

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
        if self.scale is not None:
            per_band(np.multiply, tiles, self.scale)
        if self.offset is not None:
            per_band(np.add, tiles, self.offset)
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
        if self.scale is not None:
            rows.mul_(vector(self.scale))
        if self.offset is not None:
            rows.add_(vector(self.offset))
        return tiles

    def describe(self) -> dict[str, Any]:
        values = {"mean": self.mean, "std": self.std, "low": self.low, "high": self.high}
        values |= {k: v for k, v in (("scale", self.scale), ("offset", self.offset)) if v is not None}
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
    return needs_scene(spec_steps(spec, mean=mean, std=std))


def fit_intensity(
    spec: Spec, sample: np.ndarray | None, *, channels: int, mean: Any = None, std: Any = None
) -> Intensity:
    """The normaliser for ``channels`` model inputs: ``spec`` as its normalisation steps, fitted.

    ``sample`` is ``(c, n)`` pixels of the scene's ``c`` channels; when the model
    takes more (2.5-D context stacks neighbouring slices), each scene channel's
    statistics repeat over its block of ``channels // c`` model channels.
    """
    fitted = fit_steps(spec_steps(spec, mean=mean, std=std), sample, channels=channels)
    assert isinstance(fitted, Intensity), "a window or percentiles, then moments: one step"
    return fitted


# The card's ``normalize``: an ordered list of steps, each a dict named by its first key.
STEPS: dict[str, set[str]] = {
    "clip": {"clip"},  # {"clip": [low, high]}
    "clip_percentiles": {"clip_percentiles"},  # {"clip_percentiles": [p_low, p_high]}, fitted on the scene
    "zscore": {"zscore"},  # {"zscore": "volume"}: the scene's own mean and std after the steps before it
    "mean": {"mean", "std"},  # {"mean": [...], "std": [...]}: per band
    "scale": {"scale", "offset"},  # {"scale": a, "offset": b}: x * a + b
    "divide": {"divide"},  # {"divide": d}: digital numbers to reflectance
}
# Where each step acts within one Intensity (clip, mean, std, scale, offset): steps in this order fold into one.
_SLOTS = {"clip": (0,), "clip_percentiles": (0,), "zscore": (1, 2), "mean": (1, 2), "divide": (2,), "scale": (3, 4)}


def step_kind(step: Any) -> str:
    """The step's name (its defining key), or a one-line error."""
    if isinstance(step, dict):
        kinds = [k for k in STEPS if k in step] or (["mean"] if "std" in step else [])
        if len(kinds) == 1 and not set(step) - STEPS[kinds[0]]:
            return kinds[0]
    raise ModelError(
        f"model card: a normalize step is one of {_STEP_FORMS}; got {step!r}",
    )


_STEP_FORMS = (
    '{"clip": [lo, hi]}, {"clip_percentiles": [p_lo, p_hi]}, {"zscore": "volume"}, '
    '{"mean": [...], "std": [...]}, {"scale": a, "offset": b}, {"divide": d}'
)


def check_steps(steps: Any, *, channels: int) -> None:
    """Refuse steps of unknown kinds or impossible values, one line each; per-band values are one
    number for every band or one per band of the ``channels``."""
    if not isinstance(steps, list):
        raise ModelError(f"model card: normalize is a list of steps, got {steps!r}")
    for step in steps:
        kind = step_kind(step)
        if kind == "clip" and not _increasing(step["clip"], -np.inf, np.inf):
            raise ModelError(f"model card: clip needs [low, high] with low < high, got {step['clip']!r}")
        if kind == "clip_percentiles" and not _increasing(step["clip_percentiles"], 0, 100):
            raise ModelError(
                f"model card: clip_percentiles needs [p_low, p_high] with 0 <= p_low < p_high <= 100, "
                f"got {step['clip_percentiles']!r}"
            )
        if kind == "zscore" and step["zscore"] not in ("volume", "scene"):
            raise ModelError(f'model card: zscore takes "volume" (the scene\'s own statistics), got {step["zscore"]!r}')
        for key, nonzero in (("mean", False), ("std", True), ("scale", True), ("offset", False), ("divide", True)):
            if key in step:
                _numbers(step[key], key, positive=key == "std", nonzero=nonzero, channels=channels)
        if kind == "clip":
            _numbers(step["clip"][0], "clip", positive=False, nonzero=False, channels=channels)
            _numbers(step["clip"][1], "clip", positive=False, nonzero=False, channels=channels)


def _numbers(value: Any, key: str, *, positive: bool, nonzero: bool, channels: int) -> None:
    try:
        array = np.atleast_1d(np.asarray(value, np.float64))
    except (TypeError, ValueError):
        array = np.array([np.nan])
    if array.ndim != 1 or not np.isfinite(array).all() or len(array) not in (1, channels):
        raise ModelError(
            f"model card: {key} must be one number, or one for each of the {channels} bands, got {value!r}"
        )
    if positive and (array <= 0).any():
        raise ModelError(f"model card: {key} must be positive, got {value!r}")
    if nonzero and (array == 0).any():
        raise ModelError(f"model card: {key} must not be 0, got {value!r}")


def spec_steps(spec: Spec, *, mean: Any = None, std: Any = None) -> list[dict[str, Any]]:
    """An ``intensity`` spec (with the card's ``mean``/``std``) as normalisation steps."""
    steps: list[dict[str, Any]] = []
    if spec["mode"] == "ct":
        steps.append({"clip": list(spec["window"])})
    elif spec["mode"] == "percentile":
        steps.append({"clip_percentiles": [spec.get("low", 0.5), spec.get("high", 99.5)]})
    if "mean" in spec and "std" in spec:
        mean, std = spec["mean"], spec["std"]
    steps.append({"zscore": "volume"} if mean is None or std is None else {"mean": mean, "std": std})
    return steps


def needs_scene(steps: list[dict[str, Any]]) -> bool:
    """Whether fitting ``steps`` needs pixels of the scene (percentiles or its own moments)."""
    return any(step_kind(s) in ("clip_percentiles", "zscore") for s in steps)


Normalizer = Any  # an Intensity, or a Chain of them: callable in place on (N, C, ...) tiles


@dataclass(frozen=True)
class Chain:
    """Normalisers applied one after another (steps that do not fold into one :class:`Intensity`)."""

    parts: tuple[Intensity, ...]

    def __call__(self, tiles: Any) -> Any:
        for part in self.parts:
            tiles = part(tiles)
        return tiles

    def describe(self) -> dict[str, Any]:
        return {"steps": [part.describe() for part in self.parts]}


def fit_steps(steps: list[dict[str, Any]], sample: np.ndarray | None, *, channels: int) -> Normalizer:
    """The normaliser for ``channels`` model inputs: each step fitted in order on ``sample``.

    ``sample`` is ``(c, n)`` pixels of the scene (after the steps before, for the
    steps that measure it). Without a sample (planning) steps that measure the
    scene are left out. Steps that act in the order clip, mean, std, scale,
    offset fold into one :class:`Intensity`, so the older ``clip``/``mean``/``std``
    keys and their steps run the very same arithmetic.
    """
    parts: list[dict[str, np.ndarray]] = []
    last = 99
    values = None if sample is None else sample.astype(np.float64)
    for step in steps:
        kind = step_kind(step)
        if values is None and kind in ("clip_percentiles", "zscore"):
            continue
        fitted = _fit_step(kind, step, values, channels)
        slots = _SLOTS[kind]
        if slots[0] <= last or not parts:
            parts.append({})
        parts[-1].update(fitted)
        last = slots[-1]
        if values is not None:
            values = Intensity(**_per_scene(fitted, values.shape[0]))(values[None])[0]
    made = tuple(Intensity(**part) for part in parts) or (Intensity(),)
    return made[0] if len(made) == 1 else Chain(made)


def _fit_step(kind: str, step: dict[str, Any], values: np.ndarray | None, channels: int) -> dict[str, np.ndarray]:
    """One step's values per model channel."""
    if kind == "clip":
        return {"low": _per_channel(step["clip"][0], channels), "high": _per_channel(step["clip"][1], channels)}
    if kind == "clip_percentiles":
        low, high = step["clip_percentiles"]
        data = _checked(values)
        found = np.percentile(data, low, axis=1), np.percentile(data, high, axis=1)
        return {"low": _per_channel(found[0], channels), "high": _per_channel(found[1], channels)}
    if kind == "zscore":
        mean, std = _moments(_checked(values))
        return {"mean": _per_channel(mean, channels), "std": np.maximum(_per_channel(std, channels), 1e-6)}
    if kind == "divide":
        return {"std": _per_channel(step["divide"], channels)}
    names = ("mean", "std") if kind == "mean" else ("scale", "offset")
    return {k: _per_channel(step[k], channels) for k in names if step.get(k) is not None}


def _per_scene(fitted: dict[str, np.ndarray], bands: int) -> dict[str, np.ndarray]:
    """Per-model-channel values cut to the scene's ``bands`` (2.5-D repeats each band's)."""
    return {k: v[:: max(1, len(v) // bands)][:bands] for k, v in fitted.items()}


def _checked(sample: np.ndarray | None) -> np.ndarray:
    if sample is None or sample.shape[1] == 0:
        raise ModelError("cannot measure intensities: the scene has no valid pixels")
    return sample


def _moments(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = sample.astype(np.float64)
    std = values.std(axis=1)
    return values.mean(axis=1), np.where(std > 0, std, 1.0)


def _per_channel(values: Any, channels: int) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, np.float64))
    if channels % len(array):
        raise ModelError(f"intensity values {array.tolist()} do not fit a model with {channels} channels")
    return np.repeat(array, channels // len(array))

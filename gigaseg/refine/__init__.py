"""Refinement of blended probabilities: dense CRF, superpixels, a torch CRF.

Pure parts only (arrays in, arrays out); :mod:`gigaseg.jobs.refine` runs them
block by block over a store. Every refiner has one signature::

    refiner(probabilities, features, valid, *, params, origin, spacing) -> probabilities

``probabilities`` is ``(K, *shape)`` float32, ``features`` ``(C, *shape)`` on a
0-255 scale, ``valid`` ``(*shape)`` bool; the result is ``(K, *shape)`` float32
with zeros on invalid pixels. ``origin`` is the window's first pixel in the
scene, ``spacing`` the voxel size per axis. Plain callables with this signature
are accepted wherever a method name is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gigaseg.errors import InputError
from gigaseg.refine.crf import CRFParams, crf_params, dense_crf
from gigaseg.refine.features import DEFAULT_PERCENTILES, Stretch, feature_bands, fit_stretch
from gigaseg.refine.superpixel import SuperpixelParams, superpixel_params, superpixel_vote
from gigaseg.tiler import Box

Refiner = Callable[..., np.ndarray]
HALO_CAP = 512  # pixels; a wider kernel is cut here (and a warning says so)


def torch_crf(probabilities: np.ndarray, features: np.ndarray, valid: np.ndarray, **kw: Any) -> np.ndarray:
    """The vectorised torch CRF (imported on first use: torch is heavy for worker processes)."""
    from gigaseg.refine.torch_crf import torch_crf as run

    return run(probabilities, features, valid, **kw)


def torch_crf_params(ndim: int = 2, **overrides: Any) -> Any:
    from gigaseg.refine.torch_crf import torch_crf_params as make

    return make(ndim, **overrides)


REFINERS: dict[str, Refiner] = {"crf": dense_crf, "superpixel": superpixel_vote, "crf-torch": torch_crf}
PARAMS: dict[str, Callable[..., Any]] = {
    "crf": crf_params,
    "superpixel": superpixel_params,
    "crf-torch": torch_crf_params,
}


@dataclass(frozen=True)
class RefineOptions:
    """How to refine a store; ``None`` means "the method's default".

    ``params`` is the method's parameter object (:class:`CRFParams`, ...), or a
    dict of overrides of its defaults for the scene's dimensionality.
    """

    method: str | Refiner = "crf"
    params: Any = None
    feature_bands: list[int] | None = None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    block: int | None = None
    halo: int | None = None
    workers: int | None = None
    resume: bool = False
    progress: bool = False


def get_refiner(method: str | Refiner) -> Refiner:
    if callable(method):
        return method
    if method not in REFINERS:
        raise InputError(f"refine method must be one of {sorted(REFINERS)} or a callable, got {method!r}")
    return REFINERS[method]


def method_name(method: str | Refiner) -> str:
    return method if isinstance(method, str) else getattr(method, "__qualname__", repr(method))


def resolve_params(method: str | Refiner, params: Any, ndim: int) -> Any:
    """The parameter object for ``method`` on an ``ndim``-axis scene."""
    get_refiner(method)
    if callable(method) or not (params is None or isinstance(params, dict)):
        return params
    try:
        return PARAMS[method](ndim, **(params or {}))
    except TypeError as e:
        raise InputError(f"bad parameters for refine method {method!r}: {e}") from None


def halo_width(
    params: Any, *, ndim: int, spacing: tuple[float, ...] | None = None, cap: int = HALO_CAP
) -> tuple[int, ...]:
    """The halo rule: three widths of the widest spatial kernel per axis, capped at ``cap``.

    Three standard deviations out a gaussian kernel weighs 1 % of its peak, and the
    fraction of its mass beyond is about 1 % in 2-D: pixels farther away barely move
    a pixel of the block. Widths are in finest-voxel units, so coarser axes need
    fewer voxels. Parameters without a ``reach`` (plain callables) get no halo.
    """
    reach = float(getattr(params, "reach", 0.0))
    spacing = spacing or (1.0,) * ndim
    finest = min(spacing)
    return tuple(min(cap, math.ceil(3 * reach * finest / s)) for s in spacing)


def window_box(box: Box, halo: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``halo`` on every side, clipped to the scene."""
    start = tuple(max(0, a - h) for a, h in zip(box.start, halo, strict=True))
    stop = tuple(min(n, b + h) for b, h, n in zip(box.stop, halo, shape, strict=True))
    return Box(start, stop)


def labels_from(probabilities: np.ndarray, valid: np.ndarray, *, nodata: int, dtype: Any) -> np.ndarray:
    """Argmax labels, ``nodata`` on invalid pixels."""
    labels = probabilities.argmax(axis=0).astype(dtype)
    labels[~valid] = nodata
    return labels


__all__ = [
    "HALO_CAP",
    "PARAMS",
    "REFINERS",
    "CRFParams",
    "RefineOptions",
    "Refiner",
    "Stretch",
    "SuperpixelParams",
    "crf_params",
    "dense_crf",
    "feature_bands",
    "fit_stretch",
    "get_refiner",
    "halo_width",
    "labels_from",
    "method_name",
    "resolve_params",
    "superpixel_params",
    "superpixel_vote",
    "window_box",
]

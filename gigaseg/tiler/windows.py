"""Blending windows: per-pixel weights of a tile's prediction when tiles overlap.

Each window is separable: the product of one 1-D profile per axis, so the same
code serves 2-D tiles and 3-D patches. Weights are positive everywhere (the
edge of the scene is covered by a tile's edge alone) and peak at 1.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import numpy as np

from gigaseg.errors import InputError

Profile = Callable[[int], np.ndarray]

# Smallest weight relative to the peak. nnU-Net and MONAI clamp the gaussian the
# same way so that pixels at a tile's corner still count where no other tile does.
MIN_WEIGHT = 1e-3


def gaussian_profile(n: int, *, sigma_scale: float = 0.125) -> np.ndarray:
    """A gaussian centred on the tile with sigma = n / 8, as nnU-Net and MONAI use."""
    centre = (n - 1) / 2
    sigma = max(n * sigma_scale, 1e-6)
    x = np.arange(n, dtype=np.float64)
    return np.exp(-0.5 * ((x - centre) / sigma) ** 2)


def nnunet_profile(n: int) -> np.ndarray:
    """nnU-Net's gaussian: centred on voxel ``n // 2``, sigma = n / 8, cut at four sigma as scipy's
    ``gaussian_filter`` cuts it, and the cut-off voxels given the smallest weight left (its
    ``compute_gaussian``, axis by axis). Not clamped at :data:`MIN_WEIGHT`: its edges weigh less."""
    sigma = max(n / 8, 1e-6)
    x = np.arange(n, dtype=np.float64) - n // 2
    p = np.exp(-0.5 * (x / sigma) ** 2)
    p[np.abs(x) > int(4 * sigma + 0.5)] = 0
    p[p == 0] = p[p > 0].min()
    return p


def cosine_profile(n: int) -> np.ndarray:
    """A Hann window sampled at pixel centres, so it is never zero inside the tile."""
    x = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.sin(np.pi * x) ** 2


def constant_profile(n: int) -> np.ndarray:
    """Plain averaging of the overlapping tiles."""
    return np.ones(n, dtype=np.float64)


WINDOWS: dict[str, Profile] = {
    "gaussian": gaussian_profile,
    "cosine": cosine_profile,
    "constant": constant_profile,
    "nnunet": nnunet_profile,
}
UNCLAMPED = ("nnunet",)  # windows that set their own smallest weight


def blend_window(kind: str | Profile, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 weight array of a tile of ``shape`` for the named profile.

    ``kind`` is one of :data:`WINDOWS` or any callable ``n -> 1-D weights``.
    """
    return reduce(np.multiply.outer, blend_profiles(kind, shape)).astype(np.float32)


def blend_profiles(kind: str | Profile, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The window's float64 profile along each axis: peak 1, clamped at :data:`MIN_WEIGHT`."""
    profile = _profile(kind)
    floor = 0.0 if kind in UNCLAMPED else MIN_WEIGHT
    axes = []
    for n in shape:
        p = np.asarray(profile(n), dtype=np.float64)
        axes.append(np.maximum(p / p.max(), floor))
    return axes


def _profile(kind: str | Profile) -> Profile:
    if callable(kind):
        return kind
    try:
        return WINDOWS[kind]
    except KeyError:
        raise InputError(
            f"blend must be one of {sorted(WINDOWS)} or a callable, got {kind!r}", parameters=("blend",)
        ) from None

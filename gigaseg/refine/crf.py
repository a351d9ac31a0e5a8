"""Dense (fully connected) CRF on one window, 2-D or N-d, with pydensecrf.

Mean-field inference of Krähenbühl and Koltun (NIPS 2011) with the two Potts
kernels of DeepLab (Chen et al.): a gaussian over positions (smoothness) and a
bilateral over positions plus image features (appearance). The unary is
``-log p`` of the blended softmax probabilities.

Positions are *global* pixel coordinates (window origin + index), scaled per
axis by the voxel size relative to the finest axis: kernel widths are in pixels
for images and isotropic volumes, in finest-voxel units otherwise. Global
coordinates put every pixel on the same permutohedral lattice whichever window
it is refined in, so block-wise refinement matches whole-image refinement away
from block edges. Nodata pixels are left out of the CRF entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gigaseg.errors import InputError

Spacing = tuple[float, ...]
EPSILON = 1e-5  # probabilities are clipped here before -log (uint8 stores hold zeros)


@dataclass(frozen=True)
class CRFParams:
    """Kernel parameters: widths in pixels (finest-voxel units), srgb on the 0-255 feature scale."""

    iterations: int = 10
    sxy: float = 121.0  # theta_alpha: spatial width of the bilateral kernel
    srgb: float = 5.0  # theta_beta: feature (colour) width of the bilateral kernel
    bilateral_weight: float = 4.0  # w1
    gaussian_sxy: float = 3.0  # theta_gamma: width of the smoothness kernel
    gaussian_weight: float = 3.0  # w2

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise InputError(f"CRF iterations must be at least 1, got {self.iterations}")
        widths = {"sxy": self.sxy, "srgb": self.srgb, "gaussian_sxy": self.gaussian_sxy}
        bad = {k: v for k, v in widths.items() if not v > 0}
        if bad:
            raise InputError(f"CRF kernel widths must be positive, got {bad}")
        if self.bilateral_weight < 0 or self.gaussian_weight < 0:
            raise InputError("CRF kernel weights must be >= 0")

    @property
    def reach(self) -> float:
        """The widest spatial kernel, in pixels: what the halo must cover."""
        return max(self.sxy, self.gaussian_sxy)


# DeepLab-LargeFOV (Chen et al., ICLR 2015), tuned on PASCAL VOC 2012 val:
# w1 = 4, theta_alpha = 121, theta_beta = 5, w2 = 3, theta_gamma = 3, 10 iterations.
IMAGE_DEFAULTS = CRFParams()
# Volumes: the bilateral kernel of Kamnitsas et al.'s 3-D dense CRF (dense3dCrf: 10
# voxels, weight 5), 5 iterations, and a 1-voxel smoothness kernel: a 3-voxel one
# (their default and DeepLab's) erases small structures in 3-D on our generated volumes.
VOLUME_DEFAULTS = CRFParams(iterations=5, sxy=10.0, srgb=13.0, bilateral_weight=5.0, gaussian_sxy=1.0)


def crf_params(ndim: int = 2, **overrides: Any) -> CRFParams:
    """The defaults for ``ndim`` spatial axes with ``overrides`` on top (``None`` values ignored)."""
    base = IMAGE_DEFAULTS if ndim == 2 else VOLUME_DEFAULTS
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def dense_crf(
    probabilities: np.ndarray,
    features: np.ndarray,
    valid: np.ndarray,
    *,
    params: CRFParams | None = None,
    origin: tuple[int, ...] | None = None,
    spacing: Spacing | None = None,
) -> np.ndarray:
    """Refine ``(K, *shape)`` probabilities with a dense CRF; returns ``(K, *shape)`` float32.

    ``features`` is ``(C, *shape)`` on a 0-255 scale (see :mod:`gigaseg.refine.features`),
    ``valid`` is ``(*shape)`` bool; invalid pixels take no part and come back as zeros.
    ``origin`` is the window's first pixel in the scene (default: zeros).
    """
    shape = probabilities.shape[1:]
    params = params or crf_params(len(shape))
    check_window(probabilities, features, valid)
    out = np.zeros(probabilities.shape, np.float32)
    count = int(valid.sum())
    if count == 0:
        return out
    positions = scaled_positions(shape, valid, origin=origin, spacing=spacing)
    q = _inference(_unary(probabilities, valid), positions, features[:, valid], params)
    out[:, valid] = q
    return out


def check_window(probabilities: np.ndarray, features: np.ndarray | None, valid: np.ndarray) -> None:
    shape = probabilities.shape[1:]
    if valid.shape != shape or (features is not None and features.shape[1:] != shape):
        raise InputError(
            f"probabilities {probabilities.shape}, features "
            f"{None if features is None else features.shape} and valid {valid.shape} "
            "must share their spatial shape"
        )


def _unary(probabilities: np.ndarray, valid: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities[:, valid].astype(np.float32), EPSILON, None)
    p /= p.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(-np.log(p))


def scaled_positions(
    shape: tuple[int, ...],
    valid: np.ndarray,
    *,
    origin: tuple[int, ...] | None = None,
    spacing: Spacing | None = None,
) -> np.ndarray:
    """``(ndim, N)`` float32 global coordinates of the valid pixels, in finest-voxel units."""
    origin = origin or (0,) * len(shape)
    spacing = spacing or (1.0,) * len(shape)
    finest = min(spacing)
    index = np.nonzero(valid)
    return np.stack([(i + o) * np.float32(s / finest) for i, o, s in zip(index, origin, spacing, strict=True)]).astype(
        np.float32
    )


def _inference(unary: np.ndarray, positions: np.ndarray, colours: np.ndarray, params: CRFParams) -> np.ndarray:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise InputError(
            "the crf refinement needs pydensecrf2 (pip install pydensecrf2); "
            "the crf-torch and superpixel refinements do without"
        ) from None

    labels, count = unary.shape
    crf = dcrf.DenseCRF(count, labels)
    crf.setUnaryEnergy(unary)
    if params.gaussian_weight > 0:
        crf.addPairwiseEnergy(np.ascontiguousarray(positions / params.gaussian_sxy), params.gaussian_weight)
    if params.bilateral_weight > 0 and colours.size:
        bilateral = np.concatenate([positions / params.sxy, colours.astype(np.float32) / params.srgb])
        crf.addPairwiseEnergy(np.ascontiguousarray(bilateral, np.float32), params.bilateral_weight)
    return np.asarray(crf.inference(params.iterations), np.float32).reshape(labels, count)

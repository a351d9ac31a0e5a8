"""Generated refinement problems with known truth: sharp shapes, blurred probabilities.

The network's typical failure, reproduced on purpose: class probabilities that
are right in the middle of objects but blurred across their edges (corners cut,
thin parts lost), over an image whose colours change sharply at the true edges.
Used by the tests and the benchmark; N-d (images and volumes).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def shapes_labels(shape: tuple[int, ...], *, classes: int = 3, count: int = 12, seed: int = 0) -> np.ndarray:
    """Random boxes and ellipsoids of classes ``1..classes-1`` on class 0."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    labels = np.zeros(shape, np.uint8)
    for i in range(count):
        centre = [rng.uniform(0.1 * n, 0.9 * n) for n in shape]
        radii = [rng.uniform(0.05 * n, 0.2 * n) for n in shape]
        offsets = [(g - c) / r for g, c, r in zip(grid, centre, radii, strict=True)]
        if i % 2:
            inside = np.ones(shape, bool)
            for o in offsets:
                inside &= np.abs(o) <= 1
        else:
            inside = np.asarray(sum(o**2 for o in offsets) <= 1)  # sum() is typed int | array
        labels[inside] = 1 + i % (classes - 1)
    return labels


def shapes_image(labels: np.ndarray, *, classes: int, bands: int = 3, noise: float = 8.0, seed: int = 0):
    """``(bands, *shape)`` uint8 colours per class plus gaussian noise."""
    rng = np.random.default_rng(seed + 1)
    palette = rng.uniform(30, 225, (classes, bands))
    palette[:, 0] = np.linspace(40, 215, classes)  # classes always differ in band 1
    image = palette[labels].astype(np.float32) + rng.normal(0, noise, (*labels.shape, bands))
    return np.moveaxis(np.clip(image, 0, 255), -1, 0).astype(np.uint8)


def blurred_probabilities(
    labels: np.ndarray, *, classes: int, blur: float = 4.0, shift: int = 2, seed: int = 0
) -> np.ndarray:
    """``(classes, *shape)`` float32 softmax-like probabilities blurred across edges.

    One-hot truth, shifted by ``shift`` pixels along the last axis (a network's
    misregistration), blurred with a gaussian of ``blur`` pixels and mixed with
    smooth noise, so the raw argmax misses edges, corners and thin parts.
    """
    rng = np.random.default_rng(seed + 2)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    onehot = np.roll(np.moveaxis(onehot, -1, 0), shift, axis=-1)
    sigma = (0,) + (blur,) * labels.ndim
    probs = ndimage.gaussian_filter(onehot, sigma)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, probs.shape).astype(np.float32), sigma)
    probs = np.clip(probs + 0.25 * noise / max(1e-6, noise.std()) * 0.2, 0.01, None)
    return (probs / probs.sum(axis=0, keepdims=True)).astype(np.float32)

"""Measure a network's receptive field from gradients (cheap: one forward and backward)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gigaseg.models.card import ModelCard


def receptive_field(model: nn.Module, card: ModelCard, *, size: int | None = None) -> int:
    """Side, in pixels (voxels), of the input region that moves the centre output pixel.

    The gradient of the centre pixel's scores with respect to a random input is
    non-zero exactly where the input reaches it; the widest extent over the axes
    is returned. Four random inputs are used, so that units a single input
    happens to switch off (ReLU) do not hide a path. A result equal to ``size``
    (default: the card's tile) means the field is at least that large; 0 means
    the output does not depend on the input. Weights, batch-norm statistics and
    mode are left as they were.
    """
    size = size or max(card.tile_shape())
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((4, card.in_channels) + (size,) * card.spatial_dims, generator=generator)
    x.requires_grad_(True)
    try:
        scores = model(x)
        centre = (slice(None), slice(None), *(s // 2 for s in scores.shape[2:]))
        scores[centre].abs().sum().backward()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    assert x.grad is not None, "backward() did not reach the input"
    reached = x.grad.abs().sum(dim=(0, 1)).numpy() > 0
    extents = [np.flatnonzero(reached.any(axis=other)) for other in _other_axes(reached.ndim)]
    return int(max((e[-1] - e[0] + 1 for e in extents if len(e)), default=0))


def _other_axes(ndim: int) -> list[tuple[int, ...]]:
    return [tuple(a for a in range(ndim) if a != axis) for axis in range(ndim)]

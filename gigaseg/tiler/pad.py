"""Mirror padding: a tile that is smaller than the network needs, extended by reflection.

``numpy.pad(mode="symmetric")`` at the end of each axis, expressed as the
indices it reads, so the same rule pads numpy arrays and torch tensors on any
device (a gather along each short axis).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def mirror_index(n: int, size: int) -> np.ndarray:
    """Indices into an axis of ``n`` elements that extend it to ``size`` by mirroring at its end.

    ``a b c`` to 8 is ``a b c c b a a b``: what ``np.pad(mode="symmetric")`` gives
    with the padding after the data, also when it is longer than the axis.
    """
    i = np.arange(size) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def pad_to(tensor: Any, shape: tuple[int, ...]) -> Any:
    """A torch tensor ``(..., *spatial)`` mirror-padded at the end of its last axes to ``shape``."""
    lead = tensor.ndim - len(shape)
    for axis, (n, size) in enumerate(zip(tensor.shape[lead:], shape, strict=True)):
        if n != size:
            tensor = tensor.index_select(lead + axis, _index(n, size, str(tensor.device)))
    return tensor


@functools.lru_cache(maxsize=64)
def _index(n: int, size: int, device: str) -> Any:
    """:func:`mirror_index` as a tensor on ``device``, made once (no copy to a GPU per tile)."""
    import torch

    return torch.as_tensor(mirror_index(n, size), device=device)

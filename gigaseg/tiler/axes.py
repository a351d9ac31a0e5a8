"""How a model sees a tile: the tile's axes permuted and flipped, and back again.

Tiles are cut in the scene's array order, ``(y, x)`` or ``(z, y, x)``. A network
may expect another order or orientation: a 3-D model trained on nibabel arrays
sees ``(i, j, k)`` voxel order, possibly reoriented to RAS. An :class:`AxisView`
maps a tile into the model's view and the model's scores back, so the grid,
the stitcher and the store never leave the scene's own voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class AxisView:
    """Model axis ``m`` shows scene axis ``order[m]``, reversed where ``flip[m]``."""

    order: tuple[int, ...]
    flip: tuple[bool, ...]

    @classmethod
    def identity(cls, ndim: int) -> AxisView:
        return cls(tuple(range(ndim)), (False,) * ndim)

    def __post_init__(self) -> None:
        if sorted(self.order) != list(range(len(self.order))) or len(self.flip) != len(self.order):
            raise ValueError(f"not an axis permutation with flips: {self.order}, {self.flip}")

    @property
    def is_identity(self) -> bool:
        return self == AxisView.identity(len(self.order))

    def model_axis(self, scene_axis: int) -> int:
        """The model axis that shows ``scene_axis``."""
        return self.order.index(scene_axis)

    def to_model(self, array: Any, *, lead: int = 2) -> Any:
        """``(*lead axes, *scene axes)`` -> ``(*lead axes, *model axes)``; numpy or torch."""
        moved = _permute(array, (*range(lead), *(lead + a for a in self.order)))
        return self._flip(moved, lead)

    def to_scene(self, array: Any, *, lead: int = 2) -> Any:
        """The inverse of :meth:`to_model`."""
        inverse = [self.order.index(a) for a in range(len(self.order))]
        return _permute(self._flip(array, lead), (*range(lead), *(lead + m for m in inverse)))

    def shape_to_model(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.order)

    def _flip(self, array: Any, lead: int) -> Any:
        axes = tuple(lead + m for m, f in enumerate(self.flip) if f)
        if not axes:
            return array
        return np.flip(array, axis=axes) if isinstance(array, np.ndarray) else array.flip(axes)


def _permute(array: Any, axes: tuple[int, ...]) -> Any:
    """``array`` with its axes in the order ``axes``: a view, for numpy arrays and torch tensors."""
    return array.transpose(*axes) if isinstance(array, np.ndarray) else array.permute(*axes)


def contiguous(view: np.ndarray, *, block: int = 8) -> np.ndarray:
    """``np.ascontiguousarray(view)``, copied in tiles when ``view`` is a transpose.

    When the axis that is fastest in ``view``'s memory is not its last, a plain
    copy reads (or writes) one element per cache line. Copying ``block`` slices
    at a time along both axes keeps both sides in cache: 6.6 instead of 13 ms
    for a 4 x 96^3 float32 tile whose axes are reversed.
    """
    if view.flags.c_contiguous or view.ndim < 2:
        return np.ascontiguousarray(view)
    fast = min(range(view.ndim), key=lambda a: (abs(view.strides[a]), -a))
    last = view.ndim - 1
    if fast == last:
        return np.ascontiguousarray(view)
    out = np.empty(view.shape, view.dtype)
    for i in range(0, view.shape[fast], block):
        for j in range(0, view.shape[last], block):
            part = [slice(None)] * view.ndim
            part[fast], part[last] = slice(i, i + block), slice(j, j + block)
            out[tuple(part)] = view[tuple(part)]
    return out

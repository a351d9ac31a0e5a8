"""How a model sees a tile: the tile's axes permuted and flipped, and back again.

Tiles are cut in the scene's array order, ``(y, x)`` or ``(z, y, x)``. A network
may expect another order or orientation: a 3-D model trained on nibabel arrays
sees ``(i, j, k)`` voxel order, possibly reoriented to RAS. An :class:`AxisView`
maps a tile into the model's view and the model's scores back, so the grid,
the stitcher and the store never leave the scene's own voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def to_model(self, array: np.ndarray, *, lead: int = 2) -> np.ndarray:
        """``(*lead axes, *scene axes)`` -> ``(*lead axes, *model axes)``."""
        moved = array.transpose(*range(lead), *(lead + a for a in self.order))
        return self._flip(moved, lead)

    def to_scene(self, array: np.ndarray, *, lead: int = 2) -> np.ndarray:
        """The inverse of :meth:`to_model`."""
        inverse = [self.order.index(a) for a in range(len(self.order))]
        return self._flip(array, lead).transpose(*range(lead), *(lead + m for m in inverse))

    def shape_to_model(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.order)

    def _flip(self, array: np.ndarray, lead: int) -> np.ndarray:
        axes = tuple(lead + m for m, f in enumerate(self.flip) if f)
        return np.flip(array, axis=axes) if axes else array

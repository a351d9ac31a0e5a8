"""A numpy array (in memory or memory-mapped ``.npy``) read box by box like a file source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gigaseg.errors import InputError, SourceError
from gigaseg.tiler import Box


class ArraySource:
    """``(C, *spatial)`` or ``(*spatial)`` array with the ``read(box)`` contract of file sources.

    ``spatial_dims`` says how many trailing axes are spatial; an array with one
    more axis has channels first, one with exactly that many has one channel.
    A memory-mapped array (``np.load(path, mmap_mode="r")``) is read box by box,
    never whole. Pixels equal to ``nodata`` or not finite are invalid.
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        spatial_dims: int,
        nodata: float | None = None,
        band_names: list[str] | None = None,
        path: str | None = None,
    ) -> None:
        if array.ndim == spatial_dims:
            array = array[None]
        if array.ndim != spatial_dims + 1:
            raise InputError(
                f"an array of shape {array.shape} cannot hold {spatial_dims}-D data: "
                f"expected {spatial_dims} spatial axes with an optional channel axis first"
            )
        self.array = array
        self.shape: tuple[int, ...] = tuple(array.shape[1:])
        self.dtype = array.dtype
        self.nodata = nodata
        self.band_names = band_names or [f"band{b}" for b in range(1, self.channels + 1)]
        self.path = path or f"<array {array.shape} {array.dtype}>"

    @classmethod
    def from_npy(cls, path: str | Path, *, spatial_dims: int, **kw) -> ArraySource:
        """A memory-mapped ``.npy`` file."""
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot read {path} as a .npy array: {e}") from None
        return cls(array, spatial_dims=spatial_dims, path=str(path), **kw)

    @property
    def channels(self) -> int:
        return self.array.shape[0]

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Values of ``box`` as float32 ``(C, *box.shape)`` and validity ``box.shape``.

        The values are always a fresh copy, which callers may change in place.
        """
        if len(box.start) != len(self.shape) or any(
            a < 0 or b > n for a, b, n in zip(box.start, box.stop, self.shape, strict=True)
        ):
            raise InputError(f"{box} is outside {self.path}, whose shape is {self.shape}")
        data = np.array(self.array[(slice(None), *box.slices())], dtype=np.float32, copy=True)
        valid = np.isfinite(data).all(axis=0)
        if self.nodata is not None:
            valid &= (data != np.float32(self.nodata)).all(axis=0)
        return data, valid

    def close(self) -> None:
        """Nothing to release; here so every source can be closed alike."""

"""The model's grid: a scene seen at the voxel size a network was trained at, and back.

A model trained at 1.5 mm sees a 0.7 mm scene resampled to 1.5 mm; its blended
probabilities are brought back to the scene's own voxels before the argmax, so
the mask lies on the input's grid with the input's header. Both grids cover the
same extent: along an axis of ``n`` scene voxels and ``m`` model voxels, voxel
centres map by ``x_model = (x + 0.5) * m / n - 0.5`` (the convention of
``torch.nn.functional.interpolate`` with ``align_corners=False``, of scikit-image's
``resize`` that nnU-Net uses, and of GDAL's warper), with edges replicated.

Interpolation is linear and separable: along one axis at a time, every output
voxel is a weighted sum of its two neighbours. Where ``m == n`` the weights are
0 and the values pass through exactly. Everything here is geometry on boxes and
torch tensors, on the device the tensors are on; it streams, since a box of
output needs only the box of input around it (:meth:`Regrid.footprint`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gigaseg.tiler.grid import Box, Shape


@dataclass(frozen=True, slots=True)
class Regrid:
    """A scene of ``shape`` voxels (the input) and the same extent in ``model_shape`` voxels."""

    shape: Shape
    model_shape: Shape

    @classmethod
    def between(cls, shape: Shape, spacing: tuple[float, ...], model_spacing: tuple[float, ...]) -> Regrid:
        """The model grid of a scene of ``shape`` voxels of ``spacing``, at ``model_spacing`` (same axes)."""
        model = tuple(max(1, round(n * s / m)) for n, s, m in zip(shape, spacing, model_spacing, strict=True))
        return cls(tuple(shape), model)

    @property
    def is_identity(self) -> bool:
        return self.shape == self.model_shape

    def to_model(self, box: Box) -> Box:
        """The model voxels that linear interpolation of ``box`` (scene voxels) reads."""
        return _reach(box, self.shape, self.model_shape)

    def to_scene(self, box: Box) -> Box:
        """The scene voxels that linear interpolation of ``box`` (model voxels) reads."""
        return _reach(box, self.model_shape, self.shape)

    def model_spacing(self, spacing: tuple[float, ...]) -> tuple[float, ...]:
        """The voxel size of the model grid, from the scene's: the extent over the voxel count."""
        return tuple(s * n / m for s, n, m in zip(spacing, self.shape, self.model_shape, strict=True))


def _coordinates(indices: np.ndarray, n_from: int, n_to: int) -> np.ndarray:
    """Positions, in a grid of ``n_from`` voxels, of the centres of voxels ``indices`` of a grid of ``n_to``."""
    return np.clip((indices + 0.5) * (n_from / n_to) - 0.5, 0, n_from - 1)


def _reach(box: Box, shape_to: Shape, shape_from: Shape) -> Box:
    """The voxels of the grid of ``shape_from`` that interpolating ``box`` of the grid ``shape_to`` reads."""
    start, stop = [], []
    for a, b, n_to, n_from in zip(box.start, box.stop, shape_to, shape_from, strict=True):
        first, last = _coordinates(np.array([a, b - 1], np.float64), n_from, n_to)
        start.append(int(math.floor(first)))
        stop.append(min(n_from, int(math.floor(last)) + 2))
    return Box(tuple(start), tuple(stop))


def resample(
    values: torch.Tensor, source: Box, target: Box, shapes: tuple[Shape, Shape], *, lead: int = 1
) -> torch.Tensor:
    """``values`` over ``source`` (a box of a grid of ``shapes[0]``) linearly interpolated onto ``target``
    (a box of a grid of ``shapes[1]``), axis by axis; ``lead`` leading axes (channels, classes) ride along.

    ``source`` must hold every voxel the interpolation reads (:meth:`Regrid.to_model` / ``to_scene``).
    Float tensors of any layout, on any device; the result is float32.
    """
    out = values if values.dtype.is_floating_point else values.float()
    for axis, (n_from, n_to) in enumerate(zip(*shapes, strict=True)):
        if n_from == n_to and source.start[axis] == target.start[axis] and source.stop[axis] == target.stop[axis]:
            continue
        out = _along(out, lead + axis, source.start[axis], target.start[axis], target.stop[axis], n_from, n_to)
    return out if out.dtype == torch.float32 else out.float()


def _along(values: torch.Tensor, dim: int, offset: int, start: int, stop: int, n_from: int, n_to: int) -> torch.Tensor:
    """One axis: voxels ``[start, stop)`` of a grid of ``n_to`` from ``values``, whose index 0 is voxel ``offset``
    of a grid of ``n_from``."""
    position = _coordinates(np.arange(start, stop, dtype=np.float64), n_from, n_to)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n_from - 1)
    weight = (position - low).astype(np.float32)
    device = values.device
    below = values.index_select(dim, torch.from_numpy(low - offset).to(device))
    if not weight.any():
        return below
    above = values.index_select(dim, torch.from_numpy(high - offset).to(device))
    shape = [1] * values.ndim
    shape[dim] = len(weight)
    return torch.lerp(below.float(), above.float(), torch.from_numpy(weight).to(device).view(shape))


def _empty(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, zero: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


BACK_ROWS = 8  # model-grid rows the stitcher releases at once on the way back to the scene's grid
PIECE_BYTES = 64 * 2**20  # float32 probabilities interpolated at once
Piece = tuple[Box, torch.Tensor, torch.Tensor]


class BackRows:
    """Blended model-grid rows in, scene rows out: probabilities brought back before the argmax.

    A block's stitcher releases the rows (along axis 0) of its model-grid region
    as they finish, straight into this window (:meth:`room`, then :meth:`add`);
    :meth:`ready` yields each run of ``chunk`` scene rows of ``box`` (the block)
    whose model rows are all in, as probabilities and validity on the scene's
    voxels, and the rows no later scene row reads are dropped. The window is one
    buffer of ``capacity`` rows, reused from block to block (``scratch``): on the
    CPU, buffers of a hundred megabytes allocated and freed row after row would
    split the heap (measured: 8.1 instead of 4.6 GB at 104 classes).
    """

    def __init__(
        self,
        regrid: Regrid,
        box: Box,
        region: Box,
        chunk: int,
        *,
        classes: int,
        capacity: int,
        device: torch.device,
        scratch: Any = None,
        logits: bool = False,
    ) -> None:
        self.regrid = regrid
        self.box = box  # scene voxels this block writes
        self.region = region  # the model voxels it reads: regrid.to_model(box)
        self.chunk = chunk
        self.logits = logits  # blended logits come in: resampled, then soft-maxed (nnU-Net's order)
        self.next = box.start[0]  # the first scene row not yet given out
        capacity = min(capacity, region.shape[0])
        cross = region.shape[1:]
        take = scratch.take if scratch is not None else _empty
        self._p = take("back", (classes, capacity, *cross), torch.float32, device, zero=False)
        self._v = take("back_valid", (capacity, *cross), torch.bool, device, zero=False)
        self._first = region.start[0]  # the model row at window row 0
        self._received = region.start[0]  # the model rows in: [first, received)

    @staticmethod
    def capacity(regrid: Regrid, chunk: int, release: int = BACK_ROWS) -> int:
        """Window rows enough for the model rows of a chunk of scene rows and one release."""
        return math.ceil(chunk * regrid.model_shape[0] / regrid.shape[0]) + 3 + release

    def room(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the next ``rows`` model rows go: views of the window, for the stitcher to fill."""
        at = self._received - self._first
        if at + rows > self._p.shape[1]:
            raise ValueError(f"the window holds {self._p.shape[1]} model rows; {at} are held and {rows} more came")
        return self._p[:, at : at + rows], self._v[at : at + rows]

    def add(self, rows: int) -> None:
        """The ``rows`` given by :meth:`room` are filled."""
        self._received += rows

    def ready(self, *, piece_bytes: int | None = None) -> Iterator[tuple[Box, Iterator[Piece]]]:
        """Scene boxes of up to ``chunk`` rows (whole output chunks) as soon as their model rows are in,
        each as pieces of a few rows, made one at a time: probabilities and validity on the scene's voxels.

        A piece holds at most ``piece_bytes`` of float32 probabilities (at least one row), so a chunk of
        many classes is never interpolated whole. Read each box's pieces before asking for the next box."""
        while self.next < self.box.stop[0]:
            stop = min(self.box.stop[0], (self.next // self.chunk + 1) * self.chunk)
            target = self.box.with_axis(0, self.next, stop)
            if self.regrid.to_model(target).stop[0] > self._received:
                return
            classes = self._p.shape[0]
            budget = PIECE_BYTES if piece_bytes is None else piece_bytes
            per_row = max(1, budget // (4 * classes * math.prod(target.shape[1:])))
            yield target, self._pieces(target, per_row)
            self.next = stop
            following = self.box.with_axis(0, stop, stop + 1)
            self._forget(self.regrid.to_model(following).start[0] if stop < self.box.stop[0] else self._received)

    def _pieces(self, target: Box, per_row: int) -> Iterator[Piece]:
        for start in range(target.start[0], target.stop[0], per_row):
            piece = target.with_axis(0, start, min(start + per_row, target.stop[0]))
            yield piece, *self._interpolate(piece, self.regrid.to_model(piece))

    def _interpolate(self, target: Box, reads: Box) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities, valid = self._held(reads.start[0], reads.stop[0])
        held = self.region.with_axis(0, reads.start[0], reads.stop[0])
        shapes = (self.regrid.model_shape, self.regrid.shape)
        p = resample(probabilities, held, target, shapes)
        if self.logits:
            p = torch.softmax(p, dim=0)
        v = resample(valid.to(torch.float32), held, target, shapes, lead=0) > 0.5
        return p, v

    def _held(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Model rows ``[start, stop)``: views of the window."""
        rows = slice(start - self._first, stop - self._first)
        return self._p[:, rows], self._v[rows]

    def _forget(self, keep_from: int) -> None:
        """Drop the model rows no later scene row reads: the rest move to the window's start, row by row
        in increasing order (each row is read before it is written over)."""
        drop = min(keep_from, self._received) - self._first
        if drop <= 0:
            return
        for row in range(self._received - self._first - drop):
            self._p[:, row].copy_(self._p[:, row + drop])
            self._v[row].copy_(self._v[row + drop])
        self._first += drop

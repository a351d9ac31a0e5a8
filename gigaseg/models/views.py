"""A predictor seen through an axis view: volumes in the model's axis order, or slice by slice.

The pipeline cuts tiles in the scene's ``(z, y, x)`` order. :class:`ViewPredictor`
shows each tile to the network through an :class:`~gigaseg.tiler.axes.AxisView`
(nibabel's ``(i, j, k)`` order, optionally reoriented to RAS) and maps the
scores back. In slice-wise mode the tiles are one voxel thick along the slice
axis; that axis is squeezed away so a 2-D network sees each slice as an image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gigaseg.models.card import ModelCard
from gigaseg.models.inference import Predictor
from gigaseg.tiler.axes import AxisView, contiguous


class ViewPredictor:
    """``predictor`` behind ``view``; with ``slice_axis`` (a model axis), one slice per tile."""

    def __init__(self, predictor: Predictor, view: AxisView, *, slice_axis: int | None = None) -> None:
        self.predictor = predictor
        self.view = view
        self.slice_axis = slice_axis

    @property
    def card(self) -> ModelCard:
        return self.predictor.card

    @property
    def stride(self) -> int:
        return self.predictor.stride

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def precision(self) -> str:
        return self.predictor.precision

    @property
    def batch_size(self) -> int:
        return self.predictor.batch_size

    @property
    def scores_order(self) -> tuple[int, ...]:
        """The scene axes from slowest to fastest in the memory of the scores this returns."""
        return self.view.order

    def model_shape(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        """The tile shape the network sees."""
        shape = self.view.shape_to_model(tile)
        if self.slice_axis is None:
            return shape
        return shape[: self.slice_axis] + shape[self.slice_axis + 1 :]

    def check_tile(self, tile: tuple[int, ...]) -> None:
        self.predictor.check_tile(self.model_shape(tile))

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def defers_softmax(self) -> bool:
        return self.predictor.defers_softmax

    def scores(self, tiles: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
        """``(N, C, *tile)`` in scene order -> ``(N, K, *tile)`` scores in scene order, on the device.

        The scores are a view of the network's output, in its memory order
        (:attr:`scores_order`): copying a 3-D tile's scores back to the
        scene's order would cost more than adding them up where they go.
        """
        x = self.view.to_model(tiles)
        if self.slice_axis is not None:
            x = x.squeeze(2 + self.slice_axis)
        scores = self.predictor.scores(x.contiguous(), logits=logits)
        if self.slice_axis is not None:
            scores = scores.unsqueeze(2 + self.slice_axis)
        return self.view.to_scene(scores)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """:meth:`scores` for numpy tiles, returning numpy scores (a view in :attr:`scores_order`)."""
        x = self.view.to_model(tiles)
        if self.slice_axis is not None:
            x = x.squeeze(2 + self.slice_axis)
        scores = self.predictor(contiguous(x))
        if self.slice_axis is not None:
            scores = np.expand_dims(scores, 2 + self.slice_axis)
        return self.view.to_scene(scores)

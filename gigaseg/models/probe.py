"""The card against the graph: one forward of a tile of the run, before any store exists."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gigaseg.errors import GigasegWarning, ModelError
from gigaseg.models.card import ModelCard
from gigaseg.models.formats import model_sha256

_CHECKED: dict[tuple[str, str, str, tuple[int, ...]], None] = {}


def check_graph(predictor: Any, model: str, tile: tuple[int, ...], *, planned: bool = True) -> None:
    """One forward of ``tile`` on the predictor's device, once per model, card, device and tile: the
    card's channels and classes against the graph, the tile against what the graph takes, and finite
    outputs. One line for each disagreement. Before planning (``planned`` False: the card's own tile)
    a graph that refuses the tile is left to the check of the planned one."""
    card = predictor.card
    key = (model_sha256(model), card.digest(), str(predictor.device), tuple(tile))
    if key in _CHECKED:
        return
    shape = (1, card.in_channels, *predictor.padded(tuple(tile)))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(predictor.device)
    try:
        out = _forward(predictor, x, model)
    except Exception as e:  # whatever the graph raises for an input it cannot take
        if not planned:
            return
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        detail = next((ln for ln in lines if "Guard failed" in ln or "Got:" in ln or "size" in ln), lines[0])
        raise ModelError(
            f"{model} does not take a {shape} input, a tile of this run with the card's in_channels "
            f"{card.in_channels} and spatial_dims {card.spatial_dims}: {detail[:240]}"
        ) from None
    _check_output(model, card, shape, out)
    _CHECKED[key] = None


def _forward(predictor: Any, x: torch.Tensor, model: str) -> Any:
    """The probe's forward; a graph that fails under CUDA autocast runs in float32 from then on."""
    if not predictor.autocast or predictor.device.type != "cuda":
        return predictor.raw_forward(x)
    try:
        return predictor.raw_forward(x)
    except Exception as e:  # the graph's own error: retried below without autocast
        predictor.autocast = False
        out = predictor.raw_forward(x)  # raises for an input the graph cannot take at all
        warnings.warn(
            f"{model} does not run under autocast ({type(e).__name__}); it runs in float32",
            GigasegWarning,
            stacklevel=4,
        )
        return out


def _check_output(model: str, card: ModelCard, shape: tuple[int, ...], out: Any) -> None:
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{model} returns a {type(out).__name__}, not one tensor of scores")
    channels = 1 if card.outputs == "sigmoid" else card.num_classes
    if out.ndim != len(shape) or out.shape[1] != channels:
        said = "outputs sigmoid (one channel)" if card.outputs == "sigmoid" else f"{card.num_classes} classes"
        raise ModelError(
            f"{model} gives scores of shape {tuple(out.shape)} for a {shape} input, but its card says {said}; "
            "give classes one name per output channel",
        )
    if tuple(out.shape[2:]) != shape[2:]:
        raise ModelError(
            f"{model} gives scores of shape {tuple(out.shape)} for a {shape} input; gigaseg needs scores "
            "the size of the tile",
        )
    if not torch.isfinite(out).all():
        raise ModelError(f"{model} gives non-finite scores (NaN or inf) for a finite {shape} input")
    if card.outputs == "logits" and card.num_classes > 1:
        sums = out.float().sum(1)
        if (out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            warnings.warn(
                f"{model}'s scores are probabilities (they sum to 1 over the classes): it ends in a softmax; "
                'say "outputs": "probabilities" in its card, or gigaseg applies a second softmax',
                GigasegWarning,
                stacklevel=3,
            )

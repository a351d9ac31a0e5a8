"""How a scene reaches the network: dimensions, axis order, slice-wise mode, normalisation.

* A 2-D model on a 2-D raster, or a 3-D model on a volume: tiles go straight in,
  a volume's tiles in nibabel's ``(i, j, k)`` order (RAS with ``canonical``).
* A 2-D model on a volume (``slice_axis``, counted in the model's ``(i, j, k)``
  or RAS axes): the 3-D tile grid is one voxel thick along that axis, and each
  tile is shown to the network as an image. With ``context=k`` the ``k``
  slices on either side come along as extra channels (2.5-D).
* Intensities are normalised as the model card's steps say (``normalize``, or
  the older ``clip``/``mean``/``std``/``intensity`` keys as steps), fitted on a
  strided sample of the scene where a step needs its statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gigaseg.errors import GigasegWarning, InputError
from gigaseg.io.sources import OnModelGrid, Oriented, SliceContext, Source, sample_voxels
from gigaseg.models import ModelCard, Predictor, Scorer
from gigaseg.models.intensity import fit_steps, needs_scene
from gigaseg.models.views import ViewPredictor
from gigaseg.tiler.axes import AxisView
from gigaseg.tiler.regrid import Regrid

Normalize = Callable[[Any], Any]  # in place on (N, C, ...) float32 tiles, numpy or torch


@dataclass(frozen=True)
class ModelInput:
    """The source and predictor the blocks use, and how tiles are shaped for them."""

    source: Source
    predictor: Scorer
    normalize: Normalize
    flat_axis: int | None = None  # scene axis along which tiles are one voxel thick
    record: dict[str, Any] = field(default_factory=dict)
    view: AxisView | None = None  # how the model sees the scene's axes
    regrid: Regrid | None = None  # the model's grid, where it differs from the scene's
    scene: Source | None = None  # the scene on its own grid (``source`` is it on the model's)

    @property
    def order(self) -> tuple[int, ...] | None:
        return None if self.view is None else self.view.order


def model_input(
    source: Source,
    predictor: Predictor,
    *,
    slice_axis: int | None = None,
    context: int = 0,
    canonical: bool = False,
    fit: bool = True,
) -> ModelInput:
    """Wrap ``source`` and ``predictor`` so the network sees what it was trained on.

    Without ``fit`` (planning) an intensity spec that needs the scene's statistics
    is not fitted: no voxel is read, and the card's plain normaliser stands in.
    """
    card = predictor.card
    check_dims(source, card, slice_axis=slice_axis, context=context, canonical=canonical)
    view = axis_view(source, canonical=canonical, card=card)
    flat = None if slice_axis is None else view.order[slice_axis]
    regrid = model_grid(source, card, view, slice_axis=slice_axis)
    fed: Source = source if regrid is None else OnModelGrid(source, regrid)
    if slice_axis is not None and flat is not None and context:
        fed = SliceContext(fed, axis=flat, slices=context, reverse=view.flip[slice_axis])
    if len(source.shape) == 3:
        check_volume_channels(card, source, context)
    wrapped: Scorer = predictor
    if flat is not None or not view.is_identity:
        wrapped = ViewPredictor(predictor, view, slice_axis=slice_axis)
    normalize = normalizer(card, source) if fit else card.normalizer()
    record = {"axis_order": list(view.order), "axis_flip": list(view.flip), "canonical": canonical}
    record |= {"slice_axis": slice_axis, "context": context, "intensity": _describe(normalize)}
    if regrid is not None:
        record["model_grid"] = {"shape": list(regrid.model_shape), "spacing": [round(s, 6) for s in fed.spacing]}
    return ModelInput(fed, wrapped, normalize, flat, record, view, regrid, source)


def model_grid(source: Source, card: ModelCard, view: AxisView, *, slice_axis: int | None) -> Regrid | None:
    """The model's grid over ``source`` where the card says the voxel (pixel) size it was trained at
    and the scene's differs; None where the model sees the scene's own voxels."""
    spacing = card.grid_spacing()
    if spacing is None:
        return None
    ndim = len(source.shape)
    key = "spacing" if ndim == 3 else "resolution"
    if (card.spacing is None) == (ndim == 3):
        raise InputError(
            f"the model card gives {'resolution (CRS units)' if ndim == 3 else 'spacing (mm)'} "
            f"but {source.path} is a {ndim}-D {'volume' if ndim == 3 else 'raster'}; give {key}",
            parameters=("card",),
        )
    if slice_axis is not None:
        raise InputError(
            "the model card's spacing is for models that see whole volumes; a 2-D model run slice by slice "
            "sees the scene's own voxels (leave spacing out of the card)",
            parameters=("slice_axis", "card"),
        )
    scene_spacing = [0.0] * ndim
    for m, a in enumerate(view.order):
        scene_spacing[a] = spacing[m]
    regrid = Regrid.between(tuple(source.shape), tuple(source.spacing), tuple(scene_spacing))
    warn_odd_grid(source, regrid, key)
    return None if regrid.is_identity else regrid


def warn_odd_grid(source: Source, regrid: Regrid, key: str) -> None:
    """A model grid 8 times finer or coarser than the input, or a few voxels thick, is more often a unit
    mistaken (metres for degrees, mm for cm) than meant: it runs, with one warning."""
    factors = [m / n for n, m in zip(regrid.shape, regrid.model_shape, strict=True)]
    if all(1 / 8 <= f <= 8 for f in factors) and min(regrid.model_shape) >= 4:
        return
    warnings.warn(
        f"the model card's {key} makes {source.path}'s {list(regrid.shape)} voxels {list(regrid.model_shape)} "
        f"on the model's grid ({' x '.join(f'{s:g}' for s in source.spacing)} {source.unit} per voxel here): "
        f"check the card's {key}",
        GigasegWarning,
        stacklevel=3,
    )


def check_dims(source: Source, card: ModelCard, *, slice_axis: int | None, context: int, canonical: bool) -> None:
    """Refuse model/scene combinations that cannot work, saying which option fixes them."""
    ndim, path = len(source.shape), source.path
    if card.spatial_dims not in (2, 3):
        raise InputError(f"the model card says spatial_dims {card.spatial_dims}; gigaseg runs 2-D and 3-D models")
    if ndim == 2:
        if card.spatial_dims == 3:
            raise InputError(f"the model ({card.arch}) is 3-D but {path} is a 2-D raster")
        if slice_axis is not None or context or canonical:
            raise InputError(
                f"slice_axis, context and canonical are for 3-D volumes; {path} is 2-D",
                parameters=("slice_axis", "context", "canonical"),
            )
        return
    if card.spatial_dims == 2 and slice_axis is None:
        raise InputError(
            f"{path} is a 3-D volume but the model ({card.arch}) is 2-D; run it slice by slice "
            "with slice_axis 0, 1 or 2 (the volume's i, j or k axis; 2 is axial in RAS-like volumes)",
            parameters=("slice_axis",),
        )
    if card.spatial_dims == 3 and (slice_axis is not None or context):
        raise InputError(
            f"slice_axis and context run 2-D models slice by slice, but the model ({card.arch}) is 3-D",
            parameters=("slice_axis", "context"),
        )
    if slice_axis is not None and slice_axis not in (0, 1, 2):
        raise InputError(f"slice_axis must be 0, 1 or 2, got {slice_axis}", parameters=("slice_axis",))
    if context < 0:
        raise InputError(f"context must be 0 or more slices, got {context}", parameters=("context",))


def axis_view(source: Source, *, canonical: bool, card: ModelCard | None = None) -> AxisView:
    """The source's view for models (nibabel order for NIfTI, or the card's orientation or axis
    order), else the identity."""
    orientation = card.orientation if card else None
    if card is not None and card.axis_order is not None:
        if canonical or not isinstance(source, Oriented):
            where = "canonical reorients to RAS" if canonical else f"{source.path} has no voxel axes i, j, k"
            raise InputError(
                f"the model card's axis_order orders a volume's voxel axes; {where}", parameters=("canonical",)
            )
        return AxisView(tuple(2 - v for v in card.axis_order), (False,) * 3)
    if isinstance(source, Oriented):
        if canonical and orientation is not None and orientation.upper() != "RAS":
            raise InputError(
                f"canonical shows the model RAS, but its card says orientation {orientation}", parameters=("canonical",)
            )
        return source.axis_view(canonical=canonical, orientation=orientation)
    if canonical or orientation:
        what = "canonical" if canonical else f"the model card's orientation {orientation}"
        raise InputError(
            f"{what} needs an oriented volume (NIfTI); {source.path} has no orientation", parameters=("canonical",)
        )
    return AxisView.identity(len(source.shape))


def check_volume_channels(card: ModelCard, source: Source, context: int) -> None:
    slices = 2 * context + 1
    if card.in_channels == source.channels * slices:
        return
    raise InputError(
        f"the model takes {card.in_channels} channels but {source.path} gives "
        f"{source.channels * slices} ({source.channels} per slice x {slices} slice(s)); "
        "choose volumes with volume (a number, or 'channels' for all) and neighbouring "
        "slices with context",
        parameters=("volume", "context"),
    )


def normalizer(card: ModelCard, source: Source) -> Normalize:
    """The card's normalisation steps, fitted on a sample of ``source`` where a step measures the scene."""
    steps = card.steps()
    sample = sample_voxels(source) if needs_scene(steps) else None
    return fit_steps(steps, sample, channels=card.in_channels)


def _describe(normalize: Normalize) -> dict[str, Any] | None:
    describe = getattr(normalize, "describe", None)
    return describe() if describe else None

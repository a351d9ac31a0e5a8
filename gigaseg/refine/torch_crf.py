"""A vectorised dense CRF in torch (``crf-torch``): the same model, a cheaper filter, CPU or GPU.

Mean-field inference with the two Potts kernels of :mod:`gigaseg.refine.crf` and
the same parameters, symmetric normalisation as pydensecrf, but each kernel
filtered with plain tensor operations instead of a permutohedral lattice:

* the smoothness (gaussian) kernel is a separable convolution at full resolution,
  truncated at three widths;
* the appearance (bilateral) kernel works, like ConvCRF (Teichmann and Cipolla,
  2018), on a coarse grid of cells of about a quarter of its spatial width: the
  probabilities are summed per cell, filtered between cells inside a window of
  three widths with weights from the cells' mean features, and brought back to
  full resolution by *joint bilateral upsampling* (Kopf et al., 2007): each pixel
  takes the messages of the 2^d cells around it weighted by how close its own
  feature is to theirs. That last step is what snaps labels to image edges at
  pixel precision, where ConvCRF's bilinear upsampling would blur them.

Cells are aligned to global coordinates, so block-wise refinement sees the same
cells as a whole-image run. 2-D and 3-D.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from gigaseg.errors import InputError
from gigaseg.refine.crf import EPSILON, CRFParams, check_window, crf_params

DEFAULT_WINDOW = {2: 24, 3: 4}


@dataclass(frozen=True)
class TorchCRFParams(CRFParams):
    """:class:`CRFParams` plus the coarse grid and the device.

    ``window``: cells from a cell to the edge of its bilateral window (three
    widths), so cells are ``3 sxy / window`` pixels; 0 means 24 in 2-D (cells of
    ``sxy / 8``) and 4 in 3-D, where the window holds ``(2 window + 1)^3`` cells.
    """

    window: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 0:
            raise InputError(f"crf-torch window must be >= 0 cells, got {self.window}")


def torch_crf_params(ndim: int = 2, **overrides: Any) -> TorchCRFParams:
    base = crf_params(ndim)
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    params = TorchCRFParams(**values)
    return replace(params, **{k: v for k, v in overrides.items() if v is not None})


def torch_crf(
    probabilities: np.ndarray,
    features: np.ndarray,
    valid: np.ndarray,
    *,
    params: TorchCRFParams | CRFParams | None = None,
    origin: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Refine ``(K, *shape)`` probabilities; same contract as :func:`gigaseg.refine.crf.dense_crf`."""
    ndim = probabilities.ndim - 1
    if ndim not in (2, 3):
        raise InputError(f"crf-torch refines 2-D images and 3-D volumes, not {ndim}-D arrays")
    check_window(probabilities, features, valid)
    params = params if isinstance(params, TorchCRFParams) else torch_crf_params(ndim, **_fields(params))
    if not valid.any():
        return np.zeros(probabilities.shape, np.float32)
    from gigaseg.models.inference import resolve_device

    device = resolve_device(params.device)
    spacing = spacing or (1.0,) * ndim
    scale = tuple(s / min(spacing) for s in spacing)  # finest-voxel units per voxel, per axis
    origin = origin or (0,) * ndim
    with torch.inference_mode():
        solver = _Solver(probabilities, features, valid, params, scale, origin, device)
        return solver.run().cpu().numpy()


def _fields(params: CRFParams | None) -> dict[str, Any]:
    return {} if params is None else {f.name: getattr(params, f.name) for f in fields(params)}


class _Solver:
    """The mean-field iterations on one window, with every kernel weight computed once.

    Full-resolution tensors are kept padded to whole cells and viewed as
    ``(C, n0, c0, n1, c1, ...)`` (cell index, position in cell), so summing over
    cells and spreading cell values back to pixels are reshapes and broadcasts.
    """

    def __init__(
        self,
        probabilities: np.ndarray,
        features: np.ndarray,
        valid: np.ndarray,
        params: TorchCRFParams,
        scale: tuple[float, ...],
        origin: tuple[int, ...],
        device: torch.device,
    ) -> None:
        self.params = params
        self.shape = valid.shape
        window = params.window or DEFAULT_WINDOW[len(self.shape)]
        self.cell = tuple(max(1, math.ceil(3 * params.sxy / s / window)) for s in scale)
        self.front = tuple(o % c for o, c in zip(origin, self.cell, strict=True))  # global alignment
        self.padded = tuple(-(-(f + n) // c) * c for f, n, c in zip(self.front, self.shape, self.cell, strict=True))
        self.cells = tuple(p // c for p, c in zip(self.padded, self.cell, strict=True))
        self.valid = self._pad(torch.from_numpy(valid).to(device)[None].float())
        # nodata pixels take no part whatever they hold (NaN included): their values are replaced,
        # since a weight of zero does not cancel a NaN
        p = torch.from_numpy(np.clip(np.where(valid, probabilities, 1.0), EPSILON, None, dtype=np.float32)).to(device)
        self.unary = self._pad(torch.log(p / p.sum(0, keepdim=True)))  # -U
        feats = self._pad(torch.from_numpy(np.where(valid, features, 0).astype(np.float32)).to(device) / params.srgb)
        self.kernel = _separable_gaussian(params.gaussian_sxy, scale, device)
        self.norm_gauss = self._gaussian(self.valid).clamp_min(1e-6).rsqrt() * self.valid
        counts = self._pool(self.valid)
        means = self._pool(feats * self.valid) / counts.clamp_min(1)
        self._cell_weights(means, counts, scale)
        self._upsample_weights(feats, means, counts, scale)
        self.norm_bilateral = self._bilateral(self.valid).clamp_min(1e-6).rsqrt() * self.valid

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        for f, n, p in reversed(list(zip(self.front, self.shape, self.padded, strict=True))):
            pad += [f, p - f - n]
        return F.pad(x, pad)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[(slice(None), *(slice(f, f + n) for f, n in zip(self.front, self.shape, strict=True)))]

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``(C, *padded)`` viewed as ``(C, n0, c0, n1, c1, ...)``."""
        return x.reshape(x.shape[0], *itertools.chain(*zip(self.cells, self.cell, strict=True)))

    def _spread(self, x: torch.Tensor) -> torch.Tensor:
        """``(C, *cells)`` viewed as ``(C, n0, 1, n1, 1, ...)``, to broadcast over pixels."""
        return x.reshape(x.shape[0], *itertools.chain(*((n, 1) for n in self.cells)))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over each cell: ``(C, *padded)`` -> ``(C, *cells)``."""
        return self._split(x).sum(dim=tuple(range(2, 2 + 2 * len(self.cell), 2)))

    def _cell_weights(self, means: torch.Tensor, counts: torch.Tensor, scale: tuple[float, ...]) -> None:
        """Bilateral weights between each cell and every cell within three widths of it.

        Stored as ``(*cells, *window)``: the window of offsets around each cell, zero
        outside three widths and on empty cells, so the messages are one product
        with a strided view of the cell sums (computed in slabs to bound memory).
        """
        self.reach = tuple(math.ceil(3 * self.params.sxy / (c * s)) for c, s in zip(self.cell, scale, strict=True))
        spatial = torch.zeros((), device=means.device, dtype=torch.float32)
        for axis, (r, c, s) in enumerate(zip(self.reach, self.cell, scale, strict=True)):
            shape = [1] * len(self.cell)
            shape[axis] = -1
            o = torch.arange(-r, r + 1, device=means.device, dtype=torch.float32)
            spatial = spatial + ((o * c * s / self.params.sxy) ** 2).reshape(shape)
        inside = spatial <= 9.0
        slabs = []
        for rows in self._slabs(means.shape[0] + 1):
            other = self._windows(means, rows)  # (C, *slab, *window)
            here = means[:, rows].reshape(*means[:, rows].shape, *([1] * len(self.cell)))
            features = ((other - here) ** 2).sum(0)
            present = self._windows(counts, rows)[0] > 0
            slabs.append(torch.exp(-0.5 * (spatial + features)) * (present & inside))
        self.weights = torch.cat(slabs)

    def _slabs(self, channels: int, budget: int = 2**26) -> list[slice]:
        """Slabs of cells along the first axis whose windows hold about ``budget`` values."""
        per_row = channels * math.prod(self.cells[1:]) * math.prod(2 * r + 1 for r in self.reach)
        step = max(1, budget // per_row)
        return [slice(i, min(i + step, self.cells[0])) for i in range(0, self.cells[0], step)]

    def _windows(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """``(C, *slab, *window)`` view: for each cell of the slab, the cells around it (zeros outside)."""
        pad = []
        for r in reversed(self.reach):
            pad += [r, r]
        padded = F.pad(x, pad)[:, rows.start : rows.stop + 2 * self.reach[0]]
        for axis, r in enumerate(self.reach):
            padded = padded.unfold(1 + axis, 2 * r + 1, 1)
        return padded

    def _upsample_weights(
        self, feats: torch.Tensor, means: torch.Tensor, counts: torch.Tensor, scale: tuple[float, ...]
    ) -> None:
        """Each pixel's weights for the messages of its own and the neighbouring cells.

        Joint bilateral upsampling: a gaussian of one cell in space times the
        similarity of the pixel's feature to the cell's mean feature.
        """
        ndim = len(self.cell)
        split = self._split(feats)
        self.near = list(itertools.product((-1, 0, 1), repeat=ndim))
        spatial = [self._tent(offset, feats.device) for offset in self.near]
        total = sum(spatial)  # spatial weights interpolate: they sum to one at every pixel
        weights = []
        for offset, space in zip(self.near, spatial, strict=True):
            other = self._spread(_shift(means, offset))
            similar = torch.exp(-0.5 * ((split - other) ** 2).sum(0))
            present = self._spread(_shift(counts, offset) > 0)[0]
            weights.append(space / total * similar * present)
        self.upsample = torch.stack(weights) * self._split(self.valid)  # (3^d, n0, c0, n1, c1, ...)

    def _tent(self, offset: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Gaussian (one cell wide) of each in-cell position's distance to the centre of cell + offset."""
        ndim = len(self.cell)
        square = torch.zeros([1] * (2 * ndim), device=device)
        for axis, (o, c) in enumerate(zip(offset, self.cell, strict=True)):
            u = (torch.arange(c, device=device, dtype=torch.float32) + 0.5) / c - 0.5 - o
            shape = [1] * (2 * ndim)
            shape[2 * axis + 1] = c
            square = square + (u**2).reshape(shape)
        return torch.exp(-0.5 * square)

    def _gaussian(self, x: torch.Tensor) -> torch.Tensor:
        for axis, taps in enumerate(self.kernel):
            x = _conv_axis(x, taps, axis)
        return x

    def _bilateral(self, x: torch.Tensor) -> torch.Tensor:
        sums = self._pool(x)
        window = tuple(range(-len(self.cell), 0))
        messages = torch.cat(
            [(self._windows(sums, rows) * self.weights[rows]).sum(dim=window) for rows in self._slabs(sums.shape[0])],
            dim=1,
        )
        out = self._split(x).clone()  # the pixel itself, exactly: no kernel sum falls below one
        for offset, weight in zip(self.near, self.upsample, strict=True):
            out += weight * self._spread(_shift(messages, offset))
        return out.reshape(x.shape)

    def run(self) -> torch.Tensor:
        p = self.params
        q = torch.softmax(self.unary, 0) * self.valid
        for _ in range(p.iterations):
            energy = self.unary.clone()
            if p.gaussian_weight > 0:
                energy += p.gaussian_weight * self.norm_gauss * self._gaussian(q * self.norm_gauss)
            if p.bilateral_weight > 0:
                energy += p.bilateral_weight * self.norm_bilateral * self._bilateral(q * self.norm_bilateral)
            q = torch.softmax(energy, 0) * self.valid
        return self._crop(q)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum(0, keepdim=True)


def _shift(x: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """``out[c] = x[c + offset]``, zero outside."""
    out = torch.zeros_like(x)
    src, dst = [slice(None)], [slice(None)]
    for o, n in zip(offset, x.shape[1:], strict=True):
        if abs(o) >= n:
            return out
        src.append(slice(max(0, o), n + min(0, o)))
        dst.append(slice(max(0, -o), n - max(0, o)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def _separable_gaussian(width: float, scale: tuple[float, ...], device: torch.device) -> list[torch.Tensor]:
    """One 1-D kernel per axis, truncated at three widths (in finest-voxel units)."""
    kernels = []
    for s in scale:
        sigma = width / s
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
        kernels.append(torch.exp(-0.5 * (x / sigma) ** 2))
    return kernels


def _conv_axis(x: torch.Tensor, taps: torch.Tensor, axis: int) -> torch.Tensor:
    """Convolve every channel of ``(C, *shape)`` with ``taps`` along spatial ``axis``, zero padded."""
    channels, ndim = x.shape[0], x.dim() - 1
    shape = [1] * ndim
    shape[axis] = len(taps)
    weight = taps.reshape(1, 1, *shape).expand(channels, 1, *shape).contiguous()
    padding = [0] * ndim
    padding[axis] = len(taps) // 2
    conv = F.conv2d if ndim == 2 else F.conv3d
    return conv(x[None], weight, padding=tuple(padding), groups=channels)[0]

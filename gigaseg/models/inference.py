"""Batched inference on tiles: numpy in, class scores out."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import torch
from torch import nn

from gigaseg.cpu import keep_freed_memory
from gigaseg.errors import InputError
from gigaseg.models.card import ModelCard
from gigaseg.models.registry import output_stride

MERGES = ("probs", "logits")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None


class Predictor:
    """Run a network over batches of tiles and return per-class scores.

    Scores are softmax probabilities (``merge="probs"``, the default: blending
    unnormalised logits across tiles shows seams) or raw logits. With ``tta``
    each batch also runs flipped along every combination of spatial axes (4
    passes in 2-D, 8 in 3-D) and the scores are averaged, in probability space
    when merging probabilities.
    """

    scores_order = None  # scores come C-contiguous, in the tiles' own axis order

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        merge: str = "probs",
        tta: bool = False,
        deterministic: bool = False,
    ) -> None:
        if merge not in MERGES:
            raise InputError(f"merge must be one of {MERGES}, got {merge!r}")
        self.card = card
        self.device = resolve_device(device)
        self.merge = merge
        self.batch_size = batch_size or default_batch_size(self.device)
        self.stride = output_stride(model)
        self.flips = flip_axes(card.spatial_dims) if tta else [()]
        if deterministic:
            use_deterministic_kernels()
        keep_freed_memory()
        memory_format = torch.channels_last if card.spatial_dims == 2 else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        self._memory_format = memory_format

    def check_tile(self, tile: tuple[int, ...]) -> None:
        """Refuse a tile the network cannot take, saying how to fix it."""
        bad = [t for t in tile if t % self.stride]
        if bad:
            fixed = tuple(-(-t // self.stride) * self.stride for t in tile)
            raise InputError(
                f"tile {tile} is not a multiple of {self.stride}, which {self.card.arch} needs; use --tile {fixed[0]}"
            )

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C, *tile)`` normalised float32 tiles -> ``(N, K, *tile)`` float32 scores.

        Every forward pass holds exactly ``batch_size`` tiles (the last is padded):
        convolution kernels are chosen by batch size, so a tile's scores then do not
        depend on how many tiles came with it, and blocks of any size give the same bits.
        Tiles whose sides are not multiples of the network's stride are mirror-padded
        up to one and cropped back. Scores stay on the device until every batch is
        queued, so on a GPU the host prepares and copies the next batch while the
        model still runs on this one.
        """
        shape = tiles.shape[2:]
        tiles = pad_to_multiple(tiles, self.stride)
        out = [
            self._forward(_pad_batch(tiles[i : i + self.batch_size], self.batch_size))
            for i in range(0, len(tiles), self.batch_size)
        ]
        scores = (out[0] if len(out) == 1 else torch.cat(out))[: len(tiles)].cpu().numpy()
        return scores[(slice(None), slice(None), *(slice(0, n) for n in shape))]

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        # Any strides torch accepts are kept: a batch laid out channels-last in
        # memory (as the pipeline builds it) then goes to the model without a copy.
        x = torch.from_numpy(batch if min(batch.strides) >= 0 else np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        total = None
        for axes in self.flips:
            scores = self._scores(x.flip(axes) if axes else x)
            scores = scores.flip(axes) if axes else scores
            total = scores if total is None else total + scores
        return total / len(self.flips) if len(self.flips) > 1 else total

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self._memory_format)
        with self._autocast():
            # Scores go back in plain (N, K, *tile) order, each class a contiguous plane,
            # which is what the stitcher reads; softmax costs the same either way.
            scores = self.model(x).float().contiguous()
        return torch.softmax(scores, dim=1) if self.merge == "probs" else scores

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)


def use_deterministic_kernels() -> None:
    """Bit-reproducible CUDA runs: cuDNN's autotuner and atomics-based kernels may
    otherwise pick different algorithms per run. (CPU runs are deterministic already.)
    """
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of spatial axes of an ``(N, C, *spatial)`` batch, the identity first."""
    axes = range(2, 2 + spatial_dims)
    return [c for k in range(spatial_dims + 1) for c in itertools.combinations(axes, k)]


def pad_to_multiple(tiles: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad the spatial sides of ``(N, C, *spatial)`` up to multiples of ``multiple``."""
    pad = [(0, 0), (0, 0)] + [(0, -n % multiple) for n in tiles.shape[2:]]
    if not any(p for _, p in pad):
        return tiles
    return np.pad(tiles, pad, mode="symmetric")


def _pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) == size:
        return batch
    padding = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, padding])


def default_batch_size(device: torch.device) -> int:
    """Four tiles on a CPU; on a GPU as many as a quarter of its free memory allows."""
    if device.type != "cuda":
        return 4
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(4, min(64, free // (4 * 2**30) * 4)))

"""Batched inference on tiles: numpy in, class scores out."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from gigaseg.cpu import keep_freed_memory
from gigaseg.errors import InputError, ModelError
from gigaseg.models.card import ModelCard
from gigaseg.models.registry import output_stride
from gigaseg.tiler.pad import pad_to

MERGES = ("probs", "logits")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU; ``cuda`` gets its index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but torch sees no CUDA device")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@runtime_checkable
class Scorer(Protocol):
    """What the block engine needs of a model: tiles in, class scores out, on one device.

    :class:`Predictor` is one; :class:`~gigaseg.models.views.ViewPredictor` is
    another, a predictor seen through an axis view (NIfTI, slice-wise).
    """

    @property
    def card(self) -> ModelCard: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def model(self) -> nn.Module: ...
    @property
    def stride(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def scores_order(self) -> tuple[int, ...] | None: ...
    @property
    def defers_softmax(self) -> bool: ...

    def check_tile(self, tile: tuple[int, ...]) -> None: ...

    def scores(self, x: torch.Tensor, *, logits: bool = False) -> torch.Tensor: ...


class Predictor:
    """Run a network over batches of tiles and return per-class scores.

    Scores are softmax probabilities (``merge="probs"``, the default: blending
    unnormalised logits across tiles shows seams) or raw logits. With ``tta``
    each batch also runs flipped along every combination of spatial axes (4
    passes in 2-D, 8 in 3-D) and the scores are averaged, in probability space
    when merging probabilities.
    """

    scores_order: tuple[int, ...] | None = None  # scores come C-contiguous, in the tiles' own axis order

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
        self.stride = card.size_multiple or output_stride(model)
        self.autocast = getattr(model, "gigaseg_autocast", True)  # False: the graph runs in its own type
        self.flips = flip_axes(card.spatial_dims) if tta else [()]
        self.deterministic = deterministic
        if deterministic and self.device.type == "cuda":  # read when cuBLAS starts: set before it, left set
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # cuDNN's autotuner (torch.backends.cudnn.benchmark) stays off: on the H200 it cost
        # about a second per process, more than it saved on scenes up to 16384^2 (bench/RESULTS.md).
        keep_freed_memory()
        channels_last = card.spatial_dims == 2 and getattr(model, "gigaseg_channels_last", True)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Module.to takes a device and a memory format only in separate calls (its documented signatures).
        try:
            self.model = model.to(self.device).to(memory_format=memory_format).eval()
        except RuntimeError as e:  # channels-last needs 4-D weights: a 3-D network said to be 2-D
            raise ModelError(
                f"the network's weights do not fit a 2-D network ({str(e).splitlines()[0]}); "
                'if it is a 3-D network, say "spatial_dims": 3 in its card'
            ) from None
        self._memory_format = memory_format

    def check_tile(self, tile: tuple[int, ...]) -> None:
        """Refuse a tile the network cannot take, saying how to fix it."""
        size = self.card.input_size
        if size is not None and any(t != size for t in tile):
            raise InputError(
                f"this model takes only tiles of {size} (input_size in its card), so tile {tile} cannot run; "
                f"leave tile out or set it to {size}",
                parameters=("tile",),
            )
        bad = [t for t in tile if t % self.stride]
        if bad:
            fixed = tuple(-(-t // self.stride) * self.stride for t in tile)
            raise InputError(
                f"tile {tile} is not a multiple of {self.stride}, which {self.card.arch} needs; set tile to {fixed[0]}",
                parameters=("tile",),
            )

    def padded(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a tile reaches the network in: up to a multiple of the stride, or to a fixed-size
        graph's ``input_size`` (a small scene's smaller tiles)."""
        size = self.card.input_size
        return tuple(size or -(-n // self.stride) * self.stride for n in tile)

    @property
    def precision(self) -> str:
        """The forward pass's number type: float32 on a CPU, autocast's on CUDA."""
        return str(self._autocast_dtype()).removeprefix("torch.")

    @property
    def defers_softmax(self) -> bool:
        """Whether :meth:`scores` can leave the softmax to its caller (``logits=True``).

        Merging probabilities without TTA: the stitcher then turns each tile's
        logits into probabilities where it weights and adds them. TTA averages
        probabilities, so it needs them here.
        """
        return self.merge == "probs" and len(self.flips) == 1 and self.card.outputs != "probabilities"

    @torch.no_grad()  # not inference_mode: the stitcher weights the scores in place afterwards
    def scores(self, x: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
        """``(N, C, *tile)`` normalised float32 tiles on the device -> ``(N, K, *tile)`` float32 scores there.

        Scores are probabilities with ``merge="probs"`` and logits with
        ``merge="logits"``; ``logits=True`` asks for logits where
        :attr:`defers_softmax` allows it. The pipeline's path: nothing crosses
        to the host. ``N`` should always be
        the same (``batch_size``): convolution kernels are chosen by batch size,
        so a tile's scores then do not depend on how many tiles came with it.
        Tiles whose sides are not multiples of the network's stride are
        mirror-padded up to one and cropped back (a view). The scores are laid
        out as the stitcher adds them fastest on the device (see :meth:`_scores`).
        """
        shape = x.shape[2:]
        padded = self.padded(tuple(shape))
        if padded != tuple(shape):
            x = pad_to(x, padded)
        softmax = self.merge == "probs" and not (logits and self.defers_softmax)
        total: torch.Tensor | None = None
        for axes in self.flips:
            scores = self._scores(x.flip(axes) if axes else x, softmax=softmax)
            scores = scores.flip(axes) if axes else scores
            total = scores if total is None else total.add_(scores)
        assert total is not None, "self.flips always holds at least the identity ()"
        if len(self.flips) > 1:
            total = total.div_(len(self.flips))
        return total[(slice(None), slice(None), *(slice(0, n) for n in shape))]

    @torch.no_grad()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C, *tile)`` normalised float32 tiles (numpy) -> ``(N, K, *tile)`` float32 scores (numpy).

        A convenience for callers with numpy tiles: every forward pass holds
        exactly ``batch_size`` tiles (the last is zero-padded), as in the pipeline.
        """
        out = []
        for i in range(0, len(tiles), self.batch_size):
            batch = np.ascontiguousarray(tiles[i : i + self.batch_size])
            x = torch.zeros((self.batch_size, *batch.shape[1:]), dtype=torch.float32, device=self.device)
            x[: len(batch)] = torch.from_numpy(batch)
            out.append(self.scores(x)[: len(batch)].cpu())
        return torch.cat(out).numpy()

    def _scores(self, x: torch.Tensor, *, softmax: bool) -> torch.Tensor:
        """The network's softmax probabilities (or its logits), float32, on the device.

        On a GPU they are made planar (each class a contiguous plane, as the
        stitcher's band is laid out), a fast pass there. On the CPU a 2-D
        network's channels-last output is turned into probabilities where it
        lies when there are 16 classes or more (a softmax along the contiguous
        class axis, then the stitcher reads it strided): converting 16 classes
        to planes cost more than the softmax itself. Below 16 classes torch's
        softmax along a short innermost axis is slower than the conversion.
        """
        out = self.raw_forward(x)
        if self.card.outputs == "sigmoid":  # one logit z: the two classes' logits are (0, z)
            out = torch.cat([torch.zeros_like(out), out], 1)
        elif self.card.outputs == "probabilities":  # the graph's softmax: blended as they are, or their logs
            out = out.float().contiguous()
            return out if softmax else out.clamp_min_(1e-30).log_()
        if not softmax:
            return out.float() if self.device.type == "cpu" else out.float().contiguous()
        channels_last = out.ndim == 4 and not out.is_contiguous()
        if self.device.type == "cpu" and channels_last and out.shape[1] >= 16:
            return torch.softmax(out.permute(0, 2, 3, 1), -1, dtype=torch.float32).permute(0, 3, 1, 2)
        return torch.softmax(out.contiguous(), 1, dtype=torch.float32)

    def raw_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own outputs for a batch (the model card's ``outputs`` say what they are)."""
        x = x.contiguous(memory_format=self._memory_format)
        with self._autocast(), deterministic_kernels() if self.deterministic else contextlib.nullcontext():
            return self.model(x)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda" or not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self._autocast_dtype())

    def _autocast_dtype(self) -> torch.dtype:
        if self.device.type != "cuda" or not self.autocast:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Bit-reproducible CUDA kernels while the network runs: cuDNN's autotuner and
    atomics-based kernels may otherwise pick different algorithms per run. (CPU runs
    are deterministic already.) torch's switches are process-wide; they are put back
    as they were after each forward, so a later run without the option is not slowed
    (nor its ops without a deterministic kernel warned of).
    """
    saved = kernel_switches()
    set_kernel_switches(DETERMINISTIC_SWITCHES)
    try:
        yield
    finally:
        set_kernel_switches(saved)


Switches = tuple[bool, bool, bool, bool]
DETERMINISTIC_SWITCHES: Switches = (True, True, True, False)


def kernel_switches() -> Switches:
    """torch's process-wide kernel switches: deterministic algorithms, only warning where an op
    has none, cuDNN's deterministic kernels, cuDNN's autotuner."""
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        bool(cudnn.deterministic),
        bool(cudnn.benchmark),
    )


def set_kernel_switches(switches: Switches) -> None:
    algorithms, warn_only, deterministic, benchmark = switches
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark


def flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of spatial axes of an ``(N, C, *spatial)`` batch, the identity first."""
    axes = range(2, 2 + spatial_dims)
    return [c for k in range(spatial_dims + 1) for c in itertools.combinations(axes, k)]


def default_batch_size(device: torch.device) -> int:
    """Four tiles on a CPU; on a GPU as many as a quarter of its free memory allows."""
    if device.type != "cuda":
        return 4
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(4, min(64, free // (4 * 2**30) * 4)))

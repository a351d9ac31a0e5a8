"""What a run will hold in memory, per worker: the one model the dry run, batch sizing and band fitting share.

Every term follows the data path (``gigaseg.jobs.segment``): strips of raw
pixels read ahead, one batch of tiles and its scores, the stitcher's band
(:func:`gigaseg.tiler.stitch.band_bytes`), the released rows on their way to
the writer, the network. On a GPU the band, the batch and the scores live on
the device and the host holds strips, released rows and the process itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gigaseg.errors import InputError
from gigaseg.tiler.stitch import band_bytes

# Activation memory of a small encoder-decoder per input pixel of a batch (a few
# 64-channel float32 feature maps alive at once): a rule of thumb, not a bound.
ACTIVATION_BYTES_PER_PIXEL = 64 * 4 * 4
# Resident memory of a worker before its first block: Python, torch, GDAL, zarr and
# the network's library imported (0.7-0.8 GiB measured on the development machine).
PROCESS_BYTES = 800 * 2**20
# Scores per class and pixel on a GPU: the network's bfloat16 output, its float32
# copy and the float32 probabilities made from it.
GPU_SCORE_BYTES = 2 + 4 + 4
DEFAULT_BAND_MEMORY = 4 * 2**30
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_bytes(value: int | str | None, *, default: int = DEFAULT_BAND_MEMORY) -> int:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"4GB"`` or ``"512MB"``; ``None`` is ``default``."""
    if value is None:
        return default
    if isinstance(value, int):
        number, unit = str(value), ""
    else:
        text = str(value).strip().lower().replace(" ", "")
        digits = len(text) - len(text.lstrip("0123456789."))
        number, unit = text[:digits], text[digits:]
    try:
        found = int(float(number) * UNITS[unit])
    except (KeyError, ValueError):
        raise InputError(f"a memory size must be bytes or a number with GB, GiB, MB or MiB, got {value!r}") from None
    if found <= 0:
        raise InputError(f"a memory size must be positive, got {value!r}")
    return found


def format_bytes(n: int) -> str:
    """``3.91 GiB``, ``512.0 MiB`` or ``12.0 KiB``: the largest binary unit that keeps the number >= 1."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} B"


def fit_block_side(*, depth: int, classes: int, ndim: int, budget: int, chunk: int, limit: int) -> int:
    """The largest block side (a multiple of ``chunk``, at most ``limit``) whose band fits ``budget``.

    The band holds ``depth`` rows of the block's cross-section (``side ** (ndim - 1)``
    pixels) for every class; a block's height does not change it. At least one
    chunk: a budget smaller than that is exceeded, and the dry run says so.
    """
    width = budget // max(1, band_bytes(depth, 1, classes))
    side = int(width ** (1 / (ndim - 1)) + 1e-9) // chunk * chunk
    return max(chunk, min(limit, side))


@dataclass(frozen=True)
class Footprint:
    """Predicted peak bytes of one worker: on the host and on the model's device (0 for the CPU)."""

    host: int
    device: int
    band: int  # the stitcher's band, wherever it lives

    def describe(self) -> str:
        where = f"~{format_bytes(self.host)} host"
        if self.device:
            where += f", ~{format_bytes(self.device)} GPU"
        return f"{where} (band {format_bytes(self.band)})"


def footprint(
    *,
    tile: tuple[int, ...],
    block: tuple[int, ...],
    chunk: int,
    channels: int,
    classes: int,
    batch: int,
    params: int,
    gpu: bool,
    readers: int,
    pixel_bytes: int = 4,
    probability_bytes: int = 0,
    tta: bool = False,
    back: int = 0,
) -> Footprint:
    """Peak bytes per worker for one block at a time, term by term as the data path holds them.

    With ``tta`` a batch's flipped copy and its scores are held beside the running sum. On a
    model's own grid, ``block`` and ``chunk`` are the block's region there, and ``back`` the bytes
    of probabilities being brought back to the scene's grid.
    """
    pixels = math.prod(tile)
    width = math.prod(block[1:])
    depth = min(tile[0] + chunk, block[0])
    band = band_bytes(depth, width, classes)
    strip = tile[0] * math.prod(t + b for t, b in zip(tile[1:], block[1:], strict=True)) * (channels * pixel_bytes + 1)
    strips = (readers + 2) * strip  # being read, ready, in use
    batch_in = batch * pixels * (channels * 4 * (1 + tta) + 1)
    scores = batch * pixels * classes * (GPU_SCORE_BYTES if gpu else 4) * (1 + 2 * tta)
    activations = batch * pixels * ACTIVATION_BYTES_PER_PIXEL
    rows = chunk * width
    released = rows * (2 + classes * probability_bytes)  # labels (uint8/uint16), probabilities as stored
    on_device = (
        band
        + batch_in
        + scores
        + activations
        + params * 4
        + strips
        + rows * (8 + 4 * classes * bool(probability_bytes))
        + back
    )
    if gpu:
        host = PROCESS_BYTES + 2 * strips + 2 * released + params * 4
        return Footprint(host, on_device, band)
    return Footprint(PROCESS_BYTES + on_device + 2 * released, 0, band)


# The most pixels in one forward pass on a GPU (64 tiles of 512^2, 18 of 96^3): enough to keep
# the device busy, and activations stay bounded whatever the free memory.
GPU_BATCH_PIXELS = 64 * 512 * 512


CPU_BATCH_SCORES = 256 * 2**20  # float32 scores of one CPU batch, at most (one tile at least)


def cpu_batch_size(batch: int, *, tile: tuple[int, ...], classes: int) -> int:
    """Tiles per forward pass on the CPU: ``batch``, fewer where their scores would pass
    :data:`CPU_BATCH_SCORES` (a 96^3 tile of 104 classes is 368 MB of scores, and its softmax and
    weighting copies come with it); on the CPU a batch of one runs as fast per tile."""
    return max(1, min(batch, CPU_BATCH_SCORES // (math.prod(tile) * classes * 4)))


def gpu_batch_size(*, free: int, tile: tuple[int, ...], channels: int, classes: int, band: int) -> int:
    """Tiles per forward pass on a GPU with ``free`` bytes: half of what the band leaves, at most
    :data:`GPU_BATCH_PIXELS` pixels, at least one tile."""
    pixels = math.prod(tile)
    per_tile = pixels * (channels * 4 + 1 + classes * GPU_SCORE_BYTES + ACTIVATION_BYTES_PER_PIXEL)
    return int(max(1, min(GPU_BATCH_PIXELS // pixels, (free - band) // 2 // per_tile)))

"""Keep glibc's malloc from handing freed buffers back to the kernel, and share them between threads.

A CPU forward allocates and frees activations of tens of megabytes per layer.
glibc serves every allocation above its mmap threshold (at most 32 MiB, adapted
at run time) with a fresh ``mmap`` and unmaps it on ``free``, and gives a heap's
free top back above its trim threshold: every forward then faults in every page
of every activation again, and the kernel zeroes them. On the 2-core development
machine that is a third of a small U-Net's forward time (bench/RESULTS.md, case 1).
Raising both thresholds keeps freed activations in the heap for the next batch.
PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or
tcmalloc; this needs nothing installed.

Kept memory must be reusable by every thread, or it is kept once per thread:
glibc gives each new thread a malloc arena of its own, and the pipeline's reader
and writer threads (new for every block) each held their own free strips and
bands on top of the main thread's (1.35 GB instead of 1.24 GB at 20000^2,
growing from block to block). So there is one arena for the whole process
(``M_ARENA_MAX`` = 1). Its lock costs nothing measurable here: the pipeline
allocates a few large buffers per tile row, and small Python objects do not
go through malloc.

The cost is memory a process keeps after a peak: up to ``THRESHOLD`` of free
heap instead of returning it at once. ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` in the
environment (the user's own choice), or ``GIGASEG_MALLOC=default``, leaves
glibc as it is.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

THRESHOLD = 256 * 2**20
POPULATE_FROM = 2**20  # bytes; smaller buffers come from np.zeros
_M_TRIM_THRESHOLD = -1  # from <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
_done = False


def keep_freed_memory() -> bool:
    """One malloc arena and high mmap and trim thresholds, once per process; False when left alone.

    Nothing happens off glibc (macOS, musl), when the user set malloc tunables
    in the environment, or with ``GIGASEG_MALLOC=default``.
    """
    global _done
    if _done:
        return True
    if os.environ.get("GIGASEG_MALLOC") == "default" or any(v in os.environ for v in _USER_SETTINGS):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, THRESHOLD), (_M_TRIM_THRESHOLD, THRESHOLD))
    _done = all(mallopt(option, value) for option, value in settings)
    return _done


MODEL_GRID_THRESHOLD = 32 * 2**20


def keep_less_freed_memory(threshold: int = MODEL_GRID_THRESHOLD) -> bool:
    """Lower the mmap and trim thresholds kept by :func:`keep_freed_memory` (where gigaseg set them).

    Bringing a model's grid back to the scene's allocates, piece after piece, buffers of tens to a
    hundred megabytes of many sizes between the network's; below a 256 MiB threshold they come from
    the one heap and split it. Measured at 104 classes, 512 x 512 x 200 voxels: 9.6-11.4 GB peak RSS
    with 256 MiB, 5.8 GB with 32 MiB (glibc's own largest dynamic threshold).
    """
    if not _done:
        return False
    mallopt = _glibc_mallopt()
    return mallopt is not None and all(mallopt(option, threshold) for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def zeroed(size: int, dtype: npt.DTypeLike) -> np.ndarray:
    """``np.zeros(size, dtype)`` with all its pages mapped at once, for buffers written piece by piece.

    ``np.zeros`` leaves a large array's pages unmapped until first touched, and
    numpy asks for transparent huge pages on it. A stitcher band then takes its
    page faults (or, where the kernel has to compact memory for a huge page,
    its stalls) inside the adds of the tiles that first reach each part of it:
    on the development VM a fresh 3-D band (671 MB) made each of the first 98
    tiles' adds 15 ms slower, 1.5 s in all. One ``mmap`` with ``MAP_POPULATE``
    maps the whole band in about 0.2 s, and the pages are zero. Elsewhere
    (no ``MAP_POPULATE``) and below ``POPULATE_FROM`` bytes, ``np.zeros``.
    """
    dt = np.dtype(dtype)
    nbytes = size * dt.itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if nbytes < POPULATE_FROM or populate is None:
        return np.zeros(size, dt)
    pages = mmap.mmap(
        -1, math.ceil(nbytes / mmap.PAGESIZE) * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
    )
    return np.frombuffer(pages, dt, count=size)  # the array keeps the mapping; it is unmapped with it

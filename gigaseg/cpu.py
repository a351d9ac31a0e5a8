"""Keep glibc's malloc from handing torch's activations back to the kernel after every forward.

A CPU forward allocates and frees activations of tens of megabytes per layer.
glibc serves every allocation above its mmap threshold (at most 32 MiB, adapted
at run time) with a fresh ``mmap`` and unmaps it on ``free``, and gives a heap's
free top back above its trim threshold: every forward then faults in every page
of every activation again, and the kernel zeroes them. On the 2-core development
machine that is a third of a small U-Net's forward time (bench/RESULTS.md, case 1).
Raising both thresholds keeps freed activations in the heap for the next batch.
The gain varies between runs of the same process image (some still fault:
probably a thread served by a secondary malloc arena, whose heaps cannot hold
chunks above 64 MiB); it never made a run slower in the benchmarks.
PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or
tcmalloc; this needs nothing installed.

The cost is memory a process keeps after a peak: up to ``THRESHOLD`` of free
heap per malloc arena instead of returning it at once. ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` in the environment (the user's
own choice), or ``GIGASEG_MALLOC=default``, leaves glibc as it is.
"""

from __future__ import annotations

import ctypes
import os

THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD = -1  # from <malloc.h>
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False when left alone.

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
    _done = bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD))
    return _done


def _glibc_mallopt() -> ctypes._CFuncPtr | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt

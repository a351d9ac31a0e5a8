import os
import resource
import subprocess
import sys

import numpy as np

from gigaseg.cpu import POPULATE_FROM, zeroed

FREE_THEN_ALLOCATE = """
import resource, sys
import numpy as np
from gigaseg.cpu import keep_freed_memory
print(keep_freed_memory())
a = np.ones(2**24, np.float32)  # 64 MiB, above glibc's largest default mmap threshold
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(2**24, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


FREE_THEN_ALLOCATE_IN_A_THREAD = """
import threading
import numpy as np
from gigaseg.cpu import keep_freed_memory
def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
print(keep_freed_memory())
a = np.ones(2**23, np.float32)  # 32 MiB, freed by the main thread
del a
def allocate():
    before = rss_kib()
    b = np.ones(2**23, np.float32)
    print(rss_kib() - before)
thread = threading.Thread(target=allocate)
thread.start()
thread.join()
"""


def _run(script: str = FREE_THEN_ALLOCATE, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "GIGASEG_MALLOC"))}
    out = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _run()
    assert applied == "True"
    assert faults < 50  # the freed 64 MiB came back from the heap, already mapped
    _, default_faults = _run(GIGASEG_MALLOC="default")
    assert default_faults > faults  # glibc's default maps it anew and faults it in


def test_threads_reuse_what_another_thread_freed():
    """One malloc arena: the reader and writer threads reuse what the main thread freed."""
    _, grown_kib = _run(FREE_THEN_ALLOCATE_IN_A_THREAD)
    assert grown_kib < 1024
    # The same thresholds set by the user but one arena per thread: the thread maps its own 32 MiB.
    big = str(256 * 2**20)
    _, apart_kib = _run(FREE_THEN_ALLOCATE_IN_A_THREAD, MALLOC_MMAP_THRESHOLD_=big, MALLOC_TRIM_THRESHOLD_=big)
    assert apart_kib > 30 * 1024


def test_the_users_malloc_settings_are_left_alone():
    assert _run(GIGASEG_MALLOC="default")[0] == "False"
    assert _run(MALLOC_TRIM_THRESHOLD_="1000000")[0] == "False"
    assert _run(MALLOC_ARENA_MAX="4")[0] == "False"


def test_zeroed_buffers_are_zero_and_mapped_before_they_are_written():
    """A stitcher band takes no page faults while tiles are added into it."""
    band = zeroed(2**24, np.float32)  # 64 MiB
    assert band.shape == (2**24,) and band.dtype == np.float32 and not band.any()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    band[::1024] = 1  # one write per 4 KiB page
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 64
    assert band.sum() == 2**14
    small = zeroed(10, np.uint16)
    assert small.nbytes < POPULATE_FROM and small.dtype == np.uint16 and not small.any()

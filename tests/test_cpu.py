import os
import subprocess
import sys

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


def _run(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "GIGASEG_MALLOC"))}
    out = subprocess.run(
        [sys.executable, "-c", FREE_THEN_ALLOCATE], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _run()
    assert applied == "True"
    assert faults < 50  # the freed 64 MiB came back from the heap, already mapped
    _, default_faults = _run(GIGASEG_MALLOC="default")
    assert default_faults > faults  # glibc's default maps it anew and faults it in


def test_the_users_malloc_settings_are_left_alone():
    assert _run(GIGASEG_MALLOC="default")[0] == "False"
    assert _run(MALLOC_TRIM_THRESHOLD_="1000000")[0] == "False"

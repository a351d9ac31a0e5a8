"""Fault injection for the reliability tests: fail a chosen block's write once.

Set ``GIGASEG_FAIL_WRITE=<marker file>:<block index>`` (e.g. ``/tmp/m:1,0``):
the first attempt to record that block done raises an ``OSError`` and creates
the marker, so the retry (in any process) succeeds. Unset, this costs one
environment lookup per block.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def maybe_fail_write(index: tuple[int, ...]) -> None:
    spec = os.environ.get("GIGASEG_FAIL_WRITE")
    if not spec:
        return
    marker, _, target = spec.rpartition(":")
    if tuple(int(i) for i in target.split(",")) != tuple(index):
        return
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return
    raise OSError(errno.EIO, f"injected write error for block {index}")

"""What makes an input file the same file.

A file up to :data:`WHOLE` bytes is hashed whole (about 0.1 s per 64 MiB):
its identity is its size and sha256, so a copy without its times is the same
file. Hashing a 20 GB scene whole would take longer than some runs, so of a
larger file the header (the first 64 KiB: TIFF and NIfTI headers, a COG's
directories), the tail and 32 windows of 4 KiB spread over it are hashed, and
its modification time joins the identity: a rewritten file differs in the
samples, an edited one in its time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

WHOLE = 64 * 1024 * 1024
HEAD = 64 * 1024
WINDOW = 4 * 1024
WINDOWS = 32


def file_identity(path: str | Path) -> dict[str, Any]:
    """``size`` and ``sha256`` of a local file up to :data:`WHOLE` bytes; of a larger one
    ``size``, ``mtime_ns`` and ``sampled_sha256``."""
    stat = os.stat(path)
    if stat.st_size <= WHOLE:
        return {"size": stat.st_size, "sha256": file_sha256(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for offset, length in sample_ranges(stat.st_size):
            f.seek(offset)
            digest.update(f.read(length))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampled_sha256": digest.hexdigest()}


def sample_ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts read: head, evenly spaced windows, tail; the whole of small files."""
    if size <= 2 * HEAD + WINDOWS * WINDOW:
        return [(0, size)]
    step = (size - 2 * HEAD) // (WINDOWS + 1)
    middle = [(HEAD + step * (i + 1), WINDOW) for i in range(WINDOWS)]
    return [(0, HEAD), *middle, (size - HEAD, HEAD)]


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole file (model weights: tens to hundreds of MB, well under a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

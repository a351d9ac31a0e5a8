"""What makes an input file the same file: size, modification time and sampled bytes.

Hashing a 20 GB scene whole would take longer than some runs. The header
(the first 64 KiB: TIFF and NIfTI headers, a COG's directories), the tail and
32 windows of 4 KiB spread over the file are read instead: a rewritten file
differs there, and an edited one changes its modification time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

HEAD = 64 * 1024
WINDOW = 4 * 1024
WINDOWS = 32


def file_identity(path: str | Path) -> dict[str, Any]:
    """``size``, ``mtime_ns`` and ``sampled_sha256`` of a local file."""
    stat = os.stat(path)
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

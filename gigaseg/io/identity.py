"""What makes an input file the same file.

A file up to :data:`WHOLE` bytes is hashed whole (about 0.1 s per 64 MiB):
its identity is its size and sha256, so a copy without its times is the same
file. Hashing a 20 GB scene whole would take longer than some runs, so of a
larger file the header (the first 64 KiB: TIFF and NIfTI headers, a COG's
directories), the tail and 32 windows of 4 KiB spread over it are hashed, and
its modification time joins the identity: a rewritten file differs in the
samples, an edited one in its time.

A remote object (a URL, a ``/vsi`` path) is not read whole: its identity is its
size and the version its store reports (an ETag, a generation, else its
modification time: :func:`remote_identity`); where the store reports none (or
no fsspec file system reaches it), its size and the sampled hash read through
GDAL's virtual file system.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from gigaseg.errors import SourceError
from gigaseg.io.remote import fsspec_url, gdal_path, is_remote, object_info, vsi_ranges

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


# What an object store reports as an object's version, most specific first: (our key, its keys).
VERSION_KEYS = (
    ("etag", ("ETag", "etag", "Etag")),
    ("generation", ("generation",)),
    ("md5", ("md5Hash", "Content-MD5")),
    ("modified", ("LastModified", "last_modified", "Last-Modified", "updated", "mtime")),
)


def remote_identity(path: str | Path) -> dict[str, Any]:
    """``size`` and ``etag`` (or ``generation``, ``md5``, ``modified``) of a remote object, from fsspec;
    else ``size`` and ``sampled_sha256`` of :func:`sample_ranges`, read through GDAL (``/vsizip/``...).

    A GDAL name that is no file (a connection string such as ``ZARR:"x.zarr":/mask``)
    is only its ``path``.
    """
    url = fsspec_url(gdal_path(path))
    if url is not None:
        try:
            info = object_info(url)
        except Exception:  # no fsspec file system for it (gcsfs, adlfs), or settings only GDAL has
            info = None
        found = object_version(info) if info else None
        if found is not None:
            return found
    try:
        size, parts = vsi_ranges(path, sample_ranges)
    except OSError as e:
        if is_remote(path):
            raise SourceError(f"cannot read {path} to tell its version: {e.strerror or e}") from None
        return {"path": str(path)}
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return {"size": size, "sampled_sha256": digest.hexdigest()}


def object_version(info: dict[str, Any]) -> dict[str, Any] | None:
    """``{"size": ..., <version key>: ...}`` from fsspec's ``info`` of an object; None without size or version."""
    size = info.get("size")
    if size is None:
        return None
    for name, keys in VERSION_KEYS:
        for key in keys:
            value = info.get(key)
            if value:
                text = value.isoformat() if hasattr(value, "isoformat") else str(value).strip('"')
                return {"size": int(size), name: text}
    return None

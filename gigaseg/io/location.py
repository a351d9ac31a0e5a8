"""Where an output lives: a local path, or a URL on object storage (``s3://bucket/prefix/out.zarr``).

A thin layer over fsspec. Local paths keep their own rules (symbolic links,
``os.access``, ``*.partial`` files) in the callers; these helpers only answer,
for either kind, whether something is there, whether it is a Zarr store, and
whether a new output can go there, and remove a tree. URLs go through
``fsspec.core.url_to_fs`` (``s3://`` is s3fs, the filesystem zarr's
``FsspecStore`` uses for the same URL).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from gigaseg.errors import OutputError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_remote(path: str | Path) -> bool:
    """A URL other than ``file://`` (a Path is always local)."""
    if isinstance(path, Path):
        return False
    found = _URL.match(str(path))
    return found is not None and found.group(1).lower() not in ("file", "local")


def location(path: str | Path) -> tuple[Any, str]:
    """``(filesystem, path on it)`` of a local path or URL; a remote listing cache is never trusted."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(str(path))
    except ImportError as e:  # fsspec names the package to install: s3fs for s3://
        raise OutputError(f"cannot reach {path}: {e}; for s3:// install gigaseg[cloud]") from None
    root = root.rstrip("/") or root
    if is_remote(path):
        fs.invalidate_cache(root)  # another process (or zarr's own client) may have written since
    return fs, root


def url(path: str | Path) -> str:
    """The canonical spelling of a location: ``s3://bucket/key`` (no trailing slash), or the path as given."""
    if not is_remote(path):
        return str(path)
    fs, root = location(path)
    return str(fs.unstrip_protocol(root))


def exists(path: str | Path) -> bool:
    """Whether anything is at ``path``: a file, a directory, an object or a prefix with objects under it."""
    if not is_remote(path):
        return Path(path).exists()
    fs, root = location(path)
    return _holds_objects(fs, root)


def _holds_objects(fs: Any, root: str) -> bool:
    """Whether an object lies at or anywhere under ``root``.

    Folder markers (empty objects named ``prefix/``, which the AWS console
    makes, and SeaweedFS keeps for every "directory" its deleted objects left)
    are nothing: else a removed store would block the rerun that writes it
    again. The walk stops at the first object, which a store has at its top
    (``.zgroup``).
    """
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return False
    if any(entry["type"] != "directory" and not _marker(entry) for entry in entries):
        return True
    below = {str(entry["name"]).rstrip("/") for entry in entries if entry["type"] == "directory"} - {root}
    return any(_holds_objects(fs, name) for name in below)


def _marker(entry: dict[str, Any]) -> bool:
    return str(entry["name"]).endswith("/") and not entry.get("size")


def is_store(path: str | Path) -> bool:
    """Whether ``path`` holds a Zarr group (format 2 or 3)."""
    if not is_remote(path):
        path = Path(path)
        return (path / ".zgroup").exists() or (path / "zarr.json").exists()
    fs, root = location(path)
    return bool(fs.exists(f"{root}/.zgroup") or fs.exists(f"{root}/zarr.json"))


def remove_tree(path: str | Path) -> None:
    """Delete a directory, or every object under a prefix (not the objects beside it: ``out.zarr.lock``)."""
    if not is_remote(path):
        shutil.rmtree(path)
        return
    fs, root = location(path)
    # the objects under the prefix, not one named as the prefix itself (which `rm(root, recursive)` takes too)
    below = [name for name in fs.find(root) if name.startswith(f"{root}/")]
    if below:
        fs.rm(below)
    fs.invalidate_cache(root)
    _remove_directories(fs, root)
    with contextlib.suppress(FileNotFoundError):  # and the prefix's own, which its parent lists
        fs.rm_file(f"{root}/")
    fs.invalidate_cache(root.rsplit("/", 1)[0])


def _remove_directories(fs: Any, root: str) -> None:
    """Delete the "directories" a server still lists under ``root`` once its objects are gone,
    deepest first: SeaweedFS keeps one for every directory it emptied (and zarr would take
    one inside a new store for a node it cannot read), and deletes it by its ``dir/`` key."""
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return
    for entry in entries:
        name = str(entry["name"]).rstrip("/")
        if entry["type"] == "directory" and name != root:
            _remove_directories(fs, name)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{name}/")
    fs.invalidate_cache(root)


def list_entries(path: str | Path) -> list[str]:
    """Everything at and under ``path``, by name relative to it: files as they are, directories
    with a trailing ``/``, anything else (a symbolic link, a FIFO) with a trailing ``@``. On
    object storage, its objects (one at ``path`` itself is ``""``), folder markers left out."""
    if not is_remote(path):
        found = []
        for top, directories, files in os.walk(path):  # not into symbolic links
            for name in directories + files:
                full = Path(top, name)
                kind = "@" if full.is_symlink() else "/" if full.is_dir() else "" if full.is_file() else "@"
                found.append(f"{full.relative_to(path)}{kind}")
        return sorted(found)
    fs, root = location(path)
    objects = fs.find(root, detail=True)
    return sorted(name[len(root) + 1 :] for name, entry in objects.items() if not _marker(entry))


def write_files(path: str | Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative name: contents) under ``path``; on object storage as one concurrent batch of PUTs."""
    fs, root = location(path)
    if not is_remote(path):
        for name in files:
            Path(root, name).parent.mkdir(parents=True, exist_ok=True)
    fs.pipe({f"{root}/{name}": value for name, value in files.items()})


def check_parent(path: str | Path) -> None:
    """Refuse an output whose directory (locally) or bucket (on object storage) is missing or not writable.

    On object storage this is one request (HEAD of the bucket); whether we may
    write there shows at once after, when the lock object beside the output is
    created: a refusal there is one line too, before anything else is written.
    """
    if not is_remote(path):
        import os

        parent = Path(path).absolute().parent
        if not parent.is_dir():
            raise OutputError(f"output directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {parent} is not writable")
        return
    fs, root = location(path)
    bucket = root.split("/", 1)[0]
    if "/" not in root or not bucket:
        raise OutputError(f"output {path} names a bucket, not an object in one: add a name, as in {path}/out.zarr")
    try:
        found = fs.exists(bucket)
    except OSError as e:
        raise OutputError(f"cannot reach the bucket of {path}: {e.strerror or e}") from None
    if not found:
        where = fs.unstrip_protocol(bucket)
        raise OutputError(f"the bucket {where} of output {path} does not exist or cannot be reached")

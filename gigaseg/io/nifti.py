"""NIfTI source (``.nii``, ``.nii.gz``; NIfTI-1 and NIfTI-2): sub-volumes, never the whole file.

Axes. nibabel indexes voxels ``(i, j, k)`` with ``i`` fastest on disk. gigaseg
keeps volumes in C order as ``(z, y, x) = (k, j, i)``, so an array row is a
run of bytes in the file, slabs along ``k`` stream in file order, and the mask
store's ``(z, y, x)`` is the same voxel grid: ``mask[k, j, i]`` labels voxel
``(i, j, k)``.

Reading. An uncompressed ``.nii`` is memory-mapped. A ``.nii.gz`` has no random
access, so it is decompressed once, slab by slab through nibabel, into a
chunked Zarr cache that later reads (and other processes) stream from. Voxels
are scaled by ``scl_slope``/``scl_inter`` on the way out, as float32.

From a URL (``https://``, ``s3://``, ``gs://``...; or its ``/vsicurl/``,
``/vsis3/`` form) the file is read through fsspec, reads retried after a
transient failure: a ``.nii.gz`` streams into the cache as a local one does, a
``.nii`` is read box by box with range requests (nibabel's ``fileslice`` over
the remote file). Its cache key holds the object's size and version (ETag or
modification time), not a local file's.

The cache. One copy per input file and choice of volumes, named
``<file name>.<8 hex: path and volumes><12 hex: size, mtime, header>.zarr``. A
source holds a shared ``flock`` on its copy's ``zarr.json`` while it lives (in
each process that reads it) and marks the copy's last use (the file's mtime).
Each time a copy is written: build directories whose builder is dead (or silent
for ``DEBRIS_AGE_S``) go, older copies of the same input go, then the least
recently used copies until the cache is under its bound. A copy is removed only
under an exclusive lock, so never while a source reads it.

4-D files (and higher: dimensions past the third are flattened, in file order,
into one list of volumes) give either one volume (``volume=N``) or all of them
as channels (``volume="channels"``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import zarr
from nibabel.filebasedimages import ImageFileError
from nibabel.fileslice import fileslice
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header
from nibabel.openers import Opener
from nibabel.orientations import axcodes2ornt, io_orientation
from zarr.codecs import BloscCodec

from gigaseg.errors import InputError, SourceError
from gigaseg.io.handles import ThreadLocalHandles
from gigaseg.io.niftiref import NiftiRef, check_header
from gigaseg.io.remote import as_os_error, fsspec_url, gdal_path, is_local, open_url, system_cause, url_name
from gigaseg.tiler import Box
from gigaseg.tiler.axes import AxisView

SUFFIXES = (".nii", ".nii.gz")
CHANNELS = "channels"
SLAB_BYTES = 2**25  # decompress at most this much at a time
READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError)
DEFAULT_CACHE_MAX = 50 * 2**30  # bytes of decompressed copies kept; least recently used go first
DEBRIS_AGE_S = 3600  # a build directory whose builder has not written for this long is debris
BUILDER = "builder"  # in a build directory: "host pid", touched after every slab written
COPY = re.compile(r"(?P<name>.+)\.(?P<input>[0-9a-f]{8})[0-9a-f]{12}\.zarr")
BUILD = re.compile(r"\..+\.[0-9a-f]{20}\.zarr\..+")


def is_nifti(path: str | Path) -> bool:
    name = str(path) if is_local(path) else url_name(path)  # a URL's query (?sig=...) is no part of its name
    return name.lower().endswith(SUFFIXES)


def default_cache_dir() -> Path:
    """Where decompressed ``.nii.gz`` volumes go: ``$GIGASEG_CACHE`` or the system temp dir."""
    return Path(os.environ.get("GIGASEG_CACHE") or Path(tempfile.gettempdir()) / "gigaseg-cache")


class NiftiSource(ThreadLocalHandles):
    """A NIfTI volume read box by box as float32 ``(channels, z, y, x)``.

    Picklable: the state is the path, the header and the cache location; the
    memory map or cache array is reopened on first use in each process.
    """

    unit = "mm"

    def __init__(
        self,
        path: str | Path,
        *,
        volume: int | str | None = None,
        cache_dir: str | Path | None = None,
        cache_max: int | None = None,
        header_only: bool = False,
    ) -> None:
        """``header_only``: for planning (a dry run), the header alone; a ``.nii.gz`` is not
        decompressed into the cache, and reading voxels is refused. ``cache_max``: bytes the
        cache may hold (:data:`DEFAULT_CACHE_MAX`), enforced when this source adds a copy."""
        self.path = str(path)
        header = read_header(self.path)
        self.ref = NiftiRef.from_header(header, name=self.path)
        self.georef = self.ref
        self.dtype = header.get_data_dtype().newbyteorder("=")
        self._disk_dtype = header.get_data_dtype()
        self._offset = int(header.get_data_offset())
        ni, nj, nk, nvol = file_shape(header.get_data_shape())
        self._file_shape = (ni, nj, nk, nvol)
        self.shape: tuple[int, int, int] = (nk, nj, ni)
        self.volumes = choose_volumes(nvol, volume, self.path)
        self.channels = len(self.volumes)
        sizes = self.ref.voxel_sizes
        scale = self.ref.mm_per_unit
        self.spacing: tuple[float, float, float] = (sizes[2] * scale, sizes[1] * scale, sizes[0] * scale)
        slope, inter = header.get_slope_inter()
        self.scaling = (1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter))
        self.cache: str | None = None
        self.header_only = header_only
        self._lease: Lease | None = None
        if _name(self.path).lower().endswith(".gz") and not header_only:
            directory = Path(cache_dir) if cache_dir else default_cache_dir()
            target, self._lease = build_cache(self, directory, max_bytes=cache_max or DEFAULT_CACHE_MAX)
            self.cache = str(target)
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_lease"] = None  # a lock belongs to its process; the first read takes one again
        return state

    def describe(self) -> dict[str, Any]:
        return {"volumes": list(self.volumes), "cache": self.cache}

    def axis_view(self, *, canonical: bool = False, orientation: str | None = None) -> AxisView:
        """How a model sees this volume: nibabel's ``(i, j, k)``, or reoriented to ``orientation``
        (RAS with ``canonical``): model axis ``m`` runs along the code's ``m``-th letter, voxels
        permuted and flipped, never resampled (the nearest axes, as nibabel's ``io_orientation``)."""
        code = orientation or ("RAS" if canonical else None)
        if code is None:
            return AxisView((2, 1, 0), (False, False, False))
        voxel = io_orientation(self.ref.matrix)  # per voxel axis: its world axis and direction
        wanted = axcodes2ornt(tuple(code.upper()))  # per model axis: its world axis and direction
        order, flip = [0, 0, 0], [False, False, False]
        for model_axis, (world, direction) in enumerate(wanted):
            voxel_axis = int(np.flatnonzero(voxel[:, 0] == world)[0])
            order[model_axis] = 2 - voxel_axis
            flip[model_axis] = bool(voxel[voxel_axis, 1] != direction)
        return AxisView(tuple(order), tuple(flip))

    def _array(self) -> Any:
        """``(volumes, k, j, i)`` raw voxels: the memory map, or the cache array."""
        array = getattr(self._local, "array", None)
        if array is None:
            array = self._local.array = self._open()
        return array

    def _open(self) -> Any:
        if self.header_only:
            raise SourceError(f"{self.path} was opened for planning only; its voxels are not read")
        if self.cache:
            if self._lease is None:
                self._lease = Lease.take(Path(self.cache))
            if self._lease is None:
                raise SourceError(f"the decompressed copy of {self.path} is gone from the cache ({self.cache})")
            return zarr.open_array(self.cache, mode="r")
        ni, nj, nk, nvol = self._file_shape
        if not is_local(self.path):
            return RemoteVolumes(self.path, self._file_shape, self._disk_dtype, self._offset)
        try:
            shape = (ni, nj, nk, nvol)
            mapped = np.memmap(self.path, self._disk_dtype, "r", self._offset, shape, order="F")
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot map {self.path}: {e} (is the file truncated?)") from None
        return mapped.T

    def _channel_indices(self) -> tuple[int, ...]:
        return tuple(range(self.channels)) if self.cache else self.volumes

    def close(self) -> None:
        array = getattr(self._local, "array", None)
        if isinstance(array, RemoteVolumes):
            array.close()
        self._local.array = None

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Voxels of ``box`` (in ``(z, y, x)``) as float32 ``(channels, ...)`` and validity.

        A voxel is invalid where any channel is not finite (NaN, inf).
        """
        array = self._array()
        slices = box.slices()
        channels = self._channel_indices()
        data = np.empty((len(channels), *box.shape), np.float32)
        try:
            for i, c in enumerate(channels):  # one converting copy per channel, straight from the file
                data[i] = array[(c, *slices)]
        except READ_ERRORS as e:
            message = f"cannot read {box} from {self.path}: {e}"
            if is_local(self.path):
                raise SourceError(message) from None
            self.close()  # the retry opens the file again
            raise SourceError(message) from system_cause(message)  # retryable: the runner's block task raises it
        slope, inter = self.scaling
        if slope != 1.0:
            data *= np.float32(slope)
        if inter != 0.0:
            data += np.float32(inter)
        valid = np.asarray(np.isfinite(data).all(axis=0)) if self.dtype.kind == "f" else np.ones(box.shape, bool)
        return data, valid


def read_header(path: str) -> nib.Nifti1Header:
    """The file's NIfTI header as it is on disk; one clear error if it is not NIfTI.

    Not ``nib.load(path).header``: nibabel moves the scaling into the array
    proxy and clears ``scl_slope``, ``scl_inter`` and ``vox_offset`` there.
    """
    if not is_local(path):
        return check_header(_remote_header(path), name=path)
    if not os.path.exists(path):
        raise SourceError(f"input {path} does not exist")
    if os.path.isdir(path):
        raise SourceError(f"input {path} is a directory, not a NIfTI file")
    try:
        klass = nib.load(path).header_class
        if issubclass(klass, Nifti1Header):  # NIfTI-2's header class derives from NIfTI-1's
            with Opener(path) as f:
                header = klass.from_fileobj(f, check=False)
        else:
            header = None
    except READ_ERRORS + (nib.spatialimages.HeaderDataError,) as e:
        raise SourceError(f"cannot read {path} as NIfTI: {_first_line(e)}") from None
    if header is None:  # the message check_header gives
        raise SourceError(f"{path} is not a NIfTI-1 or NIfTI-2 image but {klass.__name__}")
    return check_header(header, name=path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _name(path: str) -> str:
    """The file name of a local path or URL (without a URL's query)."""
    return Path(path).name if is_local(path) else url_name(path)


def _url(path: str) -> str:
    """The fsspec URL of a remote NIfTI file; refused for other GDAL names (``/vsizip/``...)."""
    url = fsspec_url(gdal_path(path))
    if url is None:
        raise SourceError(
            f"cannot read {path} as NIfTI: NIfTI files are read from local paths or URLs "
            "(https://, s3://, gs://, az://), not through GDAL's /vsi file systems"
        )
    return url


@contextlib.contextmanager
def open_binary(path: str) -> Any:
    """The bytes of ``path`` as a file object, decompressed for ``.gz``: nibabel's opener for a
    local file, a seekable fsspec file (range requests, reads retried) for a URL."""
    if is_local(path):
        with Opener(path) as f:
            yield f
        return
    with open_url(_url(path)) as raw:
        if _name(path).lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:  # type: ignore[arg-type]
                yield f
        else:
            yield raw


def _remote_header(path: str) -> Nifti1Header:
    """The header of a remote NIfTI-1 or NIfTI-2 file, from its first 540 bytes."""
    try:
        with open_binary(path) as f:
            block = f.read(Nifti2Header.sizeof_hdr)
    except (OSError, EOFError, zlib.error) as e:
        error = as_os_error(e)
        if error.errno == errno.ENOENT:
            raise SourceError(f"input {path} does not exist") from None
        text = f"cannot read {path} as NIfTI: {error.strerror or _first_line(e)}"
        raise SourceError(text) from system_cause(text)
    for klass in (Nifti2Header, Nifti1Header):  # NIfTI-1's test is its magic alone; NIfTI-2's its size
        if klass.may_contain_header(block) and (klass is Nifti2Header or block[344:348] == b"n+1\0"):
            try:
                return klass.from_fileobj(io.BytesIO(block), check=False)
            except (ValueError, nib.spatialimages.HeaderDataError) as e:
                raise SourceError(f"cannot read {path} as NIfTI: {_first_line(e)}") from None
    raise SourceError(f"{path} is not a single-file NIfTI-1 or NIfTI-2 image")


class RemoteVolumes:
    """``(volumes, k, j, i)`` voxels of a remote ``.nii``, read box by box with range requests.

    Indexed as the memory map of a local file is: ``[volume, k-slice, j-slice, i-slice]``.
    """

    def __init__(self, path: str, shape: tuple[int, int, int, int], dtype: np.dtype, offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, shape, dtype, offset
        self._file: Any = None

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        volume, k, j, i = key
        if self._file is None:
            self._file = open_url(_url(self.path))
        try:
            raw = fileslice(self._file, (i, j, k, volume), self.shape, self.dtype, self.offset, "F")
        except (OSError, EOFError, ValueError):
            raise
        except Exception as e:
            raise as_os_error(e) from e
        return np.asarray(raw).T

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


def file_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(ni, nj, nk, volumes)``: short shapes padded with 1, dimensions past 3 flattened."""
    padded = (*shape, 1, 1, 1)[: max(3, len(shape))]
    ni, nj, nk = padded[:3]
    return ni, nj, nk, int(np.prod(padded[3:], dtype=np.int64))


def choose_volumes(count: int, volume: int | str | None, path: str) -> tuple[int, ...]:
    """Which volumes of a file become channels: one (``volume=N``) or all (``"channels"``)."""
    if volume == CHANNELS:
        return tuple(range(count))
    if volume is None:
        if count == 1:
            return (0,)
        raise InputError(
            f"{path} holds {count} volumes (every dimension past the third): "
            f"choose one with volume (0 to {count - 1}) "
            f"or feed them all as channels with volume {CHANNELS!r}",
            parameters=("volume",),
        )
    try:
        index = int(volume)
    except (TypeError, ValueError):
        raise InputError(
            f"volume must be an index (0, 1, ...) or {CHANNELS!r}, got {volume!r}", parameters=("volume",)
        ) from None
    if not 0 <= index < count:
        raise InputError(f"volume {index} does not exist in {path}, which has volumes 0..{count - 1}")
    return (index,)


def cache_key(source: NiftiSource) -> str:
    """20 hex digits: 8 name the input (absolute path, volumes), 12 its version (size, mtime, header).

    A remote file is named by its URL; its version is its size and ETag (or modification time).
    """
    if is_local(source.path):
        stat = os.stat(source.path)
        identity = f"{os.path.abspath(source.path)}|{source.volumes}".encode()
        version = f"{stat.st_size}|{stat.st_mtime_ns}".encode() + source.ref.header
    else:
        from gigaseg.io.identity import remote_identity

        identity = f"{source.path}|{source.volumes}".encode()
        version = json.dumps(remote_identity(source.path), sort_keys=True).encode() + source.ref.header
    return hashlib.sha256(identity).hexdigest()[:8] + hashlib.sha256(version).hexdigest()[:12]


class Lease:
    """A shared lock on a cached copy's ``zarr.json``: the copy is not removed while it is held.

    Released when the lease is garbage-collected (with its source) or its process dies.
    """

    def __init__(self, fd: int) -> None:
        weakref.finalize(self, os.close, fd)

    @classmethod
    def take(cls, copy: Path) -> Lease | None:
        """Lock ``copy`` and mark its last use; ``None`` if it does not exist (or was just removed)."""
        meta = copy / "zarr.json"
        try:
            fd = os.open(meta, os.O_RDONLY)
        except OSError:
            return None
        lease = cls(fd)
        with contextlib.suppress(OSError):  # a filesystem without locks: remove_copy removes nothing there
            fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(meta).st_ino != os.fstat(fd).st_ino:  # removed before the lock was ours
                return None
            now = time.time_ns()  # not utime's default: the kernel's coarse clock ties uses a few ms apart
            os.utime(meta, ns=(now, now))
        except FileNotFoundError:
            return None
        except OSError:
            pass  # a read-only cache: the copy is used, its last use is not recorded
        return lease


def build_cache(source: NiftiSource, directory: Path, *, max_bytes: int = DEFAULT_CACHE_MAX) -> tuple[Path, Lease]:
    """The copy of the selected volumes in ``directory`` and a lease on it; decompressed if missing.

    After writing a copy, the cache is tidied (:func:`tidy_cache`) down to ``max_bytes``.
    """
    target = directory / f"{_name(source.path)}.{cache_key(source)}.zarr"
    lease = Lease.take(target)
    if lease is not None:
        return target, lease
    _build(source, target)
    lease = Lease.take(target)
    if lease is None:
        raise SourceError(f"the decompressed copy of {source.path} was removed from {directory} as it was written")
    tidy_cache(directory, keep=target, max_bytes=max_bytes)
    return target, lease


def _build(source: NiftiSource, target: Path) -> None:
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=directory))
        (partial / BUILDER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as e:
        raise SourceError(f"cannot create the decompression cache in {directory}: {e}") from None
    try:
        _decompress(source, partial / "data.zarr", heartbeat=partial / BUILDER)
        with contextlib.suppress(OSError):  # another process may have won the race: use its copy
            os.replace(partial / "data.zarr", target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def tidy_cache(directory: Path, *, keep: Path, max_bytes: int) -> None:
    """Remove dead builds, older copies of ``keep``'s input, then least recently used copies
    until the cache holds at most ``max_bytes`` (or only ``keep`` and copies in use)."""
    now = time.time()
    copies = []
    for path in directory.iterdir():
        if BUILD.fullmatch(path.name) and is_debris(path, now):
            shutil.rmtree(path, ignore_errors=True)
        elif COPY.fullmatch(path.name) and path != keep:
            copies.append(path)
    for path in [p for p in copies if _input(p) == _input(keep)]:  # older versions of the same input
        if remove_copy(path):
            copies.remove(path)
    sizes = {p: tree_bytes(p) for p in copies}
    total = tree_bytes(keep) + sum(sizes.values())
    for path in sorted(copies, key=_last_use):
        if total <= max_bytes:
            break
        if remove_copy(path):
            total -= sizes[path]


def _input(copy: Path) -> tuple[str, str]:
    match = COPY.fullmatch(copy.name)
    return (match["name"], match["input"]) if match else ("", "")


def _last_use(copy: Path) -> float:
    try:
        return (copy / "zarr.json").stat().st_mtime
    except OSError:
        return 0.0


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def is_debris(build: Path, now: float) -> bool:
    """A build directory nobody will finish: its builder (on this host) is dead, or silent too long."""
    if ".removed-" in build.name:  # a copy remove_copy renamed and did not finish deleting
        return True
    record = build / BUILDER
    try:
        host, pid = record.read_text().split()
        pid_number, beat = int(pid), record.stat().st_mtime
    except (OSError, ValueError):  # not written yet, or an older gigaseg's
        host, pid_number = "", 0
        try:
            beat = build.stat().st_mtime
        except OSError:
            return False
    if now - beat > DEBRIS_AGE_S:
        return True
    return host == socket.gethostname() and not _alive(pid_number)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_copy(copy: Path) -> bool:
    """Remove a cached copy unless a source holds it; whether it was removed."""
    try:
        fd = os.open(copy / "zarr.json", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        trash = copy.with_name(f".{copy.name}.removed-{os.getpid()}")
        os.rename(copy, trash)  # under the lock: a reader that locks next finds it gone
    except OSError:  # in use (BlockingIOError), or removed by another process
        return False
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _decompress(source: NiftiSource, path: Path, *, heartbeat: Path) -> None:
    ni, nj, nk, nvol = source._file_shape
    plane = ni * nj * source.dtype.itemsize
    slab = max(1, min(nk, 32, SLAB_BYTES // max(plane, 1)))
    array = zarr.create_array(
        str(path),
        shape=(len(source.volumes), nk, nj, ni),
        chunks=(1, slab, min(nj, 256), min(ni, 256)),
        dtype=source.dtype,
        compressors=[BloscCodec(cname="zstd", clevel=1)],
        zarr_format=3,
    )
    try:
        with open_binary(source.path) as f:
            for c, v in enumerate(source.volumes):
                for k0 in range(0, nk, slab):
                    k1 = min(k0 + slab, nk)
                    index = (slice(None), slice(None), slice(k0, k1), v)
                    raw = fileslice(f, index, (ni, nj, nk, nvol), source._disk_dtype, source._offset, "F")
                    array[c, k0:k1] = raw.T
                    _beat(heartbeat)
            while f.read(SLAB_BYTES):  # read to the end so gzip checks its CRC and length
                _beat(heartbeat)
    except READ_ERRORS + (gzip.BadGzipFile,) as e:
        if is_local(source.path) or isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)):
            raise SourceError(
                f"cannot decompress {source.path}: {_first_line(e)} (the file is corrupt or truncated)"
            ) from None
        text = f"cannot read {source.path}: {_first_line(e)}"
        raise SourceError(text) from system_cause(text)


def _beat(heartbeat: Path) -> None:
    """Mark a build alive, so that :func:`tidy_cache` in another process leaves it alone."""
    with contextlib.suppress(OSError):
        os.utime(heartbeat)

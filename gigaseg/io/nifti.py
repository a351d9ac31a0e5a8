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

4-D files (and higher: dimensions past the third are flattened, in file order,
into one list of volumes) give either one volume (``volume=N``) or all of them
as channels (``volume="channels"``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import zarr
from nibabel.filebasedimages import ImageFileError
from nibabel.fileslice import fileslice
from nibabel.openers import Opener
from nibabel.orientations import io_orientation

from gigaseg.errors import InputError, SourceError
from gigaseg.io.handles import ThreadLocalHandles
from gigaseg.io.niftiref import NiftiRef, check_header
from gigaseg.tiler import Box
from gigaseg.tiler.axes import AxisView

SUFFIXES = (".nii", ".nii.gz")
CHANNELS = "channels"
SLAB_BYTES = 2**25  # decompress at most this much at a time
READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIXES)


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
        header_only: bool = False,
    ) -> None:
        """``header_only``: for planning (a dry run), the header alone; a ``.nii.gz`` is not
        decompressed into the cache, and reading voxels is refused."""
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
        if self.path.lower().endswith(".gz") and not header_only:
            self.cache = str(build_cache(self, Path(cache_dir) if cache_dir else default_cache_dir()))
        self._local = threading.local()

    def describe(self) -> dict[str, Any]:
        return {"volumes": list(self.volumes), "cache": self.cache}

    def axis_view(self, *, canonical: bool = False) -> AxisView:
        """How a model sees this volume: nibabel's ``(i, j, k)``, reoriented to RAS if asked."""
        if not canonical:
            return AxisView((2, 1, 0), (False, False, False))
        ornt = io_orientation(self.ref.matrix)
        order, flip = [0, 0, 0], [False, False, False]
        for voxel_axis, (ras_axis, direction) in enumerate(ornt):
            order[int(ras_axis)] = 2 - voxel_axis
            flip[int(ras_axis)] = bool(direction < 0)
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
            return zarr.open_array(self.cache, mode="r")
        ni, nj, nk, nvol = self._file_shape
        try:
            shape = (ni, nj, nk, nvol)
            mapped = np.memmap(self.path, self._disk_dtype, "r", self._offset, shape, order="F")
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot map {self.path}: {e} (is the file truncated?)") from None
        return mapped.T

    def _channel_indices(self) -> tuple[int, ...]:
        return tuple(range(self.channels)) if self.cache else self.volumes

    def close(self) -> None:
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
            raise SourceError(f"cannot read {box} from {self.path}: {e}") from None
        slope, inter = self.scaling
        if slope != 1.0:
            data *= np.float32(slope)
        if inter != 0.0:
            data += np.float32(inter)
        valid = np.isfinite(data).all(axis=0) if self.dtype.kind == "f" else np.ones(box.shape, bool)
        return data, valid


def read_header(path: str) -> nib.Nifti1Header:
    """The file's NIfTI header as it is on disk; one clear error if it is not NIfTI.

    Not ``nib.load(path).header``: nibabel moves the scaling into the array
    proxy and clears ``scl_slope``, ``scl_inter`` and ``vox_offset`` there.
    """
    if not os.path.exists(path):
        raise SourceError(f"input {path} does not exist")
    if os.path.isdir(path):
        raise SourceError(f"input {path} is a directory, not a NIfTI file")
    try:
        klass = nib.load(path).header_class
        with Opener(path) as f:
            header = klass.from_fileobj(f, check=False)
    except READ_ERRORS + (nib.spatialimages.HeaderDataError,) as e:
        raise SourceError(f"cannot read {path} as NIfTI: {_first_line(e)}") from None
    return check_header(header, name=path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def file_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(ni, nj, nk, volumes)``: short shapes padded with 1, dimensions past 3 flattened."""
    padded = (*shape, 1, 1, 1)[: max(3, len(shape))]
    return (*padded[:3], int(np.prod(padded[3:], dtype=np.int64)))


def choose_volumes(count: int, volume: int | str | None, path: str) -> tuple[int, ...]:
    """Which volumes of a file become channels: one (``volume=N``) or all (``"channels"``)."""
    if volume == CHANNELS:
        return tuple(range(count))
    if volume is None:
        if count == 1:
            return (0,)
        raise InputError(
            f"{path} holds {count} volumes (every dimension past the third): "
            f"choose one with --volume N (0 to {count - 1}) "
            f"or feed them all as channels with --volume {CHANNELS}"
        )
    try:
        index = int(volume)
    except (TypeError, ValueError):
        raise InputError(f"--volume must be a volume number or {CHANNELS!r}, got {volume!r}") from None
    if not 0 <= index < count:
        raise InputError(f"volume {index} does not exist in {path}, which has volumes 0..{count - 1}")
    return (index,)


def cache_key(source: NiftiSource) -> str:
    stat = os.stat(source.path)
    text = f"{os.path.abspath(source.path)}|{stat.st_size}|{stat.st_mtime_ns}|{source.volumes}"
    return hashlib.sha256(text.encode() + source.ref.header).hexdigest()[:20]


def build_cache(source: NiftiSource, directory: Path) -> Path:
    """Decompress the selected volumes once into a chunked Zarr array; reuse it if complete."""
    target = directory / f"{Path(source.path).name}.{cache_key(source)}.zarr"
    if (target / "zarr.json").exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=directory))
    except OSError as e:
        raise SourceError(f"cannot create the decompression cache in {directory}: {e}") from None
    try:
        _decompress(source, partial / "data.zarr")
        with contextlib.suppress(OSError):  # another process may have won the race: use its copy
            os.replace(partial / "data.zarr", target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _decompress(source: NiftiSource, path: Path) -> None:
    ni, nj, nk, nvol = source._file_shape
    plane = ni * nj * source.dtype.itemsize
    slab = max(1, min(nk, 32, SLAB_BYTES // max(plane, 1)))
    array = zarr.create_array(
        str(path),
        shape=(len(source.volumes), nk, nj, ni),
        chunks=(1, slab, min(nj, 256), min(ni, 256)),
        dtype=source.dtype,
        compressors=[zarr.codecs.BloscCodec(cname="zstd", clevel=1)],
        zarr_format=3,
    )
    try:
        with Opener(source.path) as f:
            for c, v in enumerate(source.volumes):
                for k0 in range(0, nk, slab):
                    k1 = min(k0 + slab, nk)
                    index = (slice(None), slice(None), slice(k0, k1), v)
                    raw = fileslice(f, index, (ni, nj, nk, nvol), source._disk_dtype, source._offset, "F")
                    array[c, k0:k1] = raw.T
            while f.read(SLAB_BYTES):  # read to the end so gzip checks its CRC and length
                pass
    except READ_ERRORS + (gzip.BadGzipFile,) as e:
        raise SourceError(
            f"cannot decompress {source.path}: {_first_line(e)} (the file is corrupt or truncated)"
        ) from None

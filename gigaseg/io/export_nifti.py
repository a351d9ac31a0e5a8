"""Export a volume's mask store to NIfTI with the input image's header, slab by slab.

The mask's header is the image's (see :meth:`NiftiRef.mask_header`), so
nibabel, ITK/SimpleITK and ITK-SNAP overlay it on the image without
resampling. Voxels go out in file order, one chunk row of ``k`` slices at a
time: the Zarr ``(z, y, x) = (k, j, i)`` C-order slab is the NIfTI ``(i, j, k)``
Fortran-order run of bytes, so nothing is transposed or held whole.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from pathlib import Path

import numpy as np

from gigaseg.errors import InputError, OutputError
from gigaseg.io.store import MaskStore
from gigaseg.tiler import Box


def write_nifti(store: MaskStore, output: Path) -> None:
    """Write the store's mask to ``output`` (``.nii`` or ``.nii.gz``) atomically."""
    ref = store.nifti
    if ref is None:
        raise InputError(
            f"{output}: the store's mask did not come from a NIfTI volume, so it has no NIfTI "
            "header to copy; export it to .tif"
        )
    header = ref.mask_header(store.mask.dtype)
    expected = tuple(reversed((*ref.shape, 1, 1)[:3]))
    if tuple(store.mask.shape) != expected:
        raise InputError(f"the mask's shape {store.mask.shape} does not match its NIfTI header {expected}")
    partial = output.with_name(f".{output.name}.partial")
    try:
        with _open(partial, gzipped=output.name.lower().endswith(".gz")) as f:
            header.write_to(f)
            f.write(b"\0" * (int(header.get_data_offset()) - f.tell()))
            _write_voxels(store, f)
        os.replace(partial, output)
    except OSError as e:
        raise OutputError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _open(path: Path, *, gzipped: bool) -> io.BufferedIOBase:
    if gzipped:
        return gzip.GzipFile(path, "wb", compresslevel=6, mtime=0)
    return open(path, "wb")  # noqa: SIM115 - returned to a with statement


def _write_voxels(store: MaskStore, f: io.BufferedIOBase) -> None:
    mask = store.mask
    rows = mask.chunks[0]
    for start in range(0, mask.shape[0], rows):
        stop = min(start + rows, mask.shape[0])
        slab = np.ascontiguousarray(store.read(Box((start, 0, 0), (stop, *mask.shape[1:]))))
        f.write(slab.astype(slab.dtype.newbyteorder("=")).tobytes())

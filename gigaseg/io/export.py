"""Export a mask store, chunk row by chunk row: a Cloud-Optimized GeoTIFF, or NIfTI for volumes."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio does not export the base class
from rasterio.errors import RasterioError
from rasterio.windows import Window

from gigaseg.errors import GigasegError, InputError, OutputError, OutputExistsError
from gigaseg.io.export_nifti import write_nifti
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.io.store import MaskStore, open_store
from gigaseg.tiler import Box

# Distinct colours for classes without colours of their own (tab10).
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def export_mask(
    store_path: str | Path, output: str | Path, *, overwrite: bool = False, allow_incomplete: bool = False
) -> None:
    """Write the store's mask as a COG with its CRS, transform, nodata and colour table.

    An output ending in ``.nii`` or ``.nii.gz`` gets a NIfTI file with the input
    volume's header instead (see :mod:`gigaseg.io.export_nifti`).
    """
    store = open_store(store_path, require_complete=not allow_incomplete)
    if not store.complete:
        warnings.warn(f"{store_path} is INCOMPLETE: unwritten blocks export as nodata", GigasegWarning, stacklevel=2)
    output = Path(output)
    nifti = output.name.lower().endswith((".nii", ".nii.gz"))
    if output.suffix.lower() not in (".tif", ".tiff") and not nifti:
        raise InputError(f"cannot export to {output}: the name must end in .tif, .nii or .nii.gz")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} exists; pass --overwrite to replace it")
    if not os.access(output.absolute().parent, os.W_OK):
        raise OutputError(f"output directory {output.absolute().parent} is not writable")
    if nifti:
        write_nifti(store, output)
        return
    # both temporaries sit beside the output (same disk: the rename is atomic) and go on any failure
    staging = output.with_name(f".{output.name}.staging.tif")
    partial = output.with_name(f".{output.name}.partial")
    messages: list[str] = []
    try:
        with _libtiff_messages(messages):
            _write_tiled(store, staging)
            rasterio.shutil.copy(
                staging, partial, driver="COG", compress="DEFLATE", blocksize=512, overview_resampling="NEAREST"
            )
        os.replace(partial, output)
    except GigasegError:
        raise
    except (RasterioError, CPLE_BaseError, OSError) as e:  # a full disk ends as a CPLE_AppDefinedError
        cause = _root_cause(messages) or (e.strerror if isinstance(e, OSError) else None) or _first_line(e)
        raise OutputError(f"cannot write {output}: {cause}") from None
    finally:
        for path in (staging, partial):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@contextlib.contextmanager
def _libtiff_messages(messages: list[str]) -> Iterator[None]:
    """Collect into ``messages`` what is printed to file descriptor 2 meanwhile; print it on success.

    libtiff inside GDAL prints some I/O errors straight there (``_tiffSeekProc: No
    space left on device.``, once per attempt), while GDAL raises a vaguer error;
    the first of those lines is the cause a user can act on.
    """
    try:
        sink = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    except OSError:  # no room for it either: let the lines through
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    failed = True
    try:
        yield
        failed = False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        messages += sink.read().decode(errors="replace").splitlines()
        sink.close()
        if not failed and messages:
            print("\n".join(messages), file=sys.stderr)


def _root_cause(messages: list[str]) -> str | None:
    """``No space left on device`` from ``_tiffSeekProc: No space left on device.``"""
    for line in messages:
        if line.strip():
            return re.sub(r"^\w+: ", "", line.strip()).rstrip(".")
    return None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _write_tiled(store: MaskStore, path: Path) -> None:
    mask = store.mask
    if mask.ndim != 2:
        raise InputError("only 2-D masks export to GeoTIFF; export 3-D masks to .nii.gz")
    height, width = mask.shape
    georef = store.georef
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": str(mask.dtype),
        "nodata": store.nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "DEFLATE",
        "BIGTIFF": "IF_SAFER",
        "transform": georef.affine,
        "crs": georef.crs_wkt,
    }
    rows = mask.chunks[0]
    with rasterio.open(path, "w", **profile) as dst:
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            rows_box = Box((start, 0), (stop, width))
            dst.write(store.read(rows_box), 1, window=Window(0, start, width, stop - start))
        if mask.dtype == np.uint8:
            dst.write_colormap(1, colormap(store))
        dst.update_tags(1, CLASSES=",".join(store.classes))


def colormap(store: MaskStore) -> dict[int, tuple[int, int, int, int]]:
    """Class colours from the model card (else a default palette); nodata transparent."""
    colors = store.attrs.get("model_card", {}).get("colors") or []
    table = {}
    for i, _ in enumerate(store.classes):
        hex_color = colors[i] if i < len(colors) else PALETTE[i % len(PALETTE)]
        table[i] = (*(int(hex_color.lstrip("#")[k : k + 2], 16) for k in (0, 2, 4)), 255)
    table[store.nodata] = (0, 0, 0, 0)
    return table

"""Export a mask store, chunk row by chunk row: a Cloud-Optimized GeoTIFF, or NIfTI for volumes."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio does not export the base class
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from gigaseg.errors import GigasegError, InputError, OutputError, OutputExistsError
from gigaseg.io.export_nifti import write_nifti
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.io.location import check_parent, exists, is_remote, location
from gigaseg.io.store import MaskStore, open_store
from gigaseg.tiler import Box

if TYPE_CHECKING:
    from gigaseg.jobs.progress import Progress

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
    store_path: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    progress: bool = False,
) -> None:
    """Write the store's mask as a COG with its CRS, transform, nodata and colour table.

    An output ending in ``.nii`` or ``.nii.gz`` gets a NIfTI file with the input
    volume's header instead (see :mod:`gigaseg.io.export_nifti`). With ``progress``
    a bar on stderr (a terminal only) advances per written chunk row of the GeoTIFF.
    The store, and the output, may be URLs on object storage (``s3://bucket/x.tif``).
    """
    if is_remote(output):
        _export_to_object_storage(store_path, str(output), overwrite, allow_incomplete, progress)
        return
    store = open_store(store_path, require_complete=not allow_incomplete)
    if not store.complete:
        warnings.warn(f"{store_path} is INCOMPLETE: unwritten blocks export as nodata", GigasegWarning, stacklevel=2)
    output = Path(output)
    nifti = output.name.lower().endswith((".nii", ".nii.gz"))
    if output.suffix.lower() not in (".tif", ".tiff") and not nifti:
        raise InputError(f"cannot export to {output}: the name must end in .tif, .nii or .nii.gz")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} exists; pass overwrite to replace it", parameters=("overwrite",))
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
        # the bar is opened on its own copy of the terminal: file descriptor 2 is collected meanwhile
        with _progress_bar(store, progress) as bar, _libtiff_messages(messages):
            _write_tiled(store, staging, on_rows=bar.advance)
            bar.note("writing the COG and its overviews", refresh=True)
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


def _export_to_object_storage(
    store_path: str | Path, output: str, overwrite: bool, allow_incomplete: bool, progress: bool
) -> None:
    """Export into a local temporary directory, then upload the file to its key in one go.

    A PUT (a multipart upload, for large files) makes the object appear whole
    when it completes, or not at all, so the upload goes straight to the final
    key: readers never see part of a COG, and nothing is left to clean up.
    """
    name = output.rstrip("/").rsplit("/", 1)[-1]
    if not name.lower().endswith((".tif", ".tiff", ".nii", ".nii.gz")):
        raise InputError(f"cannot export to {output}: the name must end in .tif, .nii or .nii.gz")
    if exists(output) and not overwrite:
        raise OutputExistsError(f"output {output} exists; pass overwrite to replace it", parameters=("overwrite",))
    check_parent(output)
    with tempfile.TemporaryDirectory(prefix="gigaseg-export-") as scratch:
        local = Path(scratch) / name
        export_mask(store_path, local, overwrite=True, allow_incomplete=allow_incomplete, progress=progress)
        fs, key = location(output)
        try:
            fs.put_file(str(local), key)
        except OSError as e:
            raise OutputError(f"cannot upload {output}: {e.strerror or e}") from None


@contextlib.contextmanager
def _progress_bar(store: MaskStore, enabled: bool) -> Iterator[Progress]:
    """A bar over the mask's pixels that writes to a duplicate of stderr, when that is a terminal."""
    from gigaseg.jobs.progress import Progress, is_terminal

    stream = None
    if enabled and is_terminal(sys.stderr):
        sys.stderr.flush()
        stream = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    try:
        with Progress(store.mask.size, desc="export", enabled=stream is not None, file=stream) as bar:
            yield bar
    finally:
        if stream is not None:
            stream.close()


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


def _write_tiled(store: MaskStore, path: Path, *, on_rows: Callable[[int], None] | None = None) -> None:
    """The mask as a tiled GeoTIFF, one chunk row at a time; ``on_rows`` is told each row's pixels."""
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
    }
    if georef.crs_wkt is not None or not georef.affine.is_identity:  # else no georeferencing to write, as read
        profile.update(transform=georef.affine, crs=georef.crs_wkt)
    rows = mask.chunks[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # no CRS: said once, when the input was read
        dst = rasterio.open(path, "w", **profile)
    with dst:
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            rows_box = Box((start, 0), (stop, width))
            dst.write(store.read(rows_box), 1, window=Window(0, start, width, stop - start))
            if on_rows is not None:
                on_rows(rows_box.size)
        if mask.dtype == np.uint8:
            dst.write_colormap(1, colormap(store))
        dst.update_tags(1, CLASSES=",".join(store.classes))


def colormap(store: MaskStore) -> dict[int, tuple[int, int, int, int]]:
    """Class colours from the model card (else a default palette); nodata transparent."""
    colors = store.attrs.get("model_card", {}).get("colors") or []
    table = {}
    for i, _ in enumerate(store.classes):
        hex_color = colors[i] if i < len(colors) else PALETTE[i % len(PALETTE)]
        red, green, blue = (int(hex_color.lstrip("#")[k : k + 2], 16) for k in (0, 2, 4))
        table[i] = (red, green, blue, 255)
    table[store.nodata] = (0, 0, 0, 0)
    return table

"""The Zarr mask store: labels, optional probabilities, georeferencing, progress.

Layout (zarr format 2 by default, which the GDAL inside rasterio's wheels reads)::

    out.zarr/                 attrs["gigaseg"]: provenance and "complete"
      mask                    (y, x) labels; fill value = nodata label
      probabilities           optional (class, y, x), float16 or uint8 (p * 255)
      x, y                    pixel-centre coordinates (rectilinear grids only)
      spatial_ref             CF grid mapping: crs_wkt and GeoTransform
      blocks_done             one element per block, each its own chunk
      block_counts            per block: pixels per class, then nodata (the run's summary)
      mask_crc32              one CRC-32 per mask chunk (gigaseg.io.checksums)
      probabilities_crc32     one per probabilities chunk

Completion protocol: a block writes its chunks, then its own ``blocks_done``
element; :meth:`MaskStore.finish` sets ``complete`` only when every element is
set. A store killed half way therefore says how far it got and never claims to
be complete. Each chunk's checksum is recorded as it is written, so
:meth:`MaskStore.verify` finds chunks damaged or deleted since.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec

from gigaseg.errors import DamagedStoreError, IncompleteStoreError, OutputError, OutputExistsError, SourceError
from gigaseg.io import zarrs
from gigaseg.io.checksums import (
    SUFFIX,
    Verification,
    chunk_counts,
    read_checked,
    read_per_chunk,
    verify_array,
    write_checked,
)
from gigaseg.io.georef import Georef
from gigaseg.io.location import check_parent, exists, is_remote, list_entries, remove_tree, write_files
from gigaseg.io.location import is_store as location_is_store
from gigaseg.io.niftiref import NiftiRef
from gigaseg.tiler import Box

PROBABILITY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


@dataclass(frozen=True)
class StoreLayout:
    """Everything needed to create an empty store for one scene."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    block_counts: tuple[int, ...]
    classes: list[str]
    georef: Georef | NiftiRef
    probabilities: str | None = None
    zarr_format: Literal[2, 3] = 2
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self.classes) < 255 else np.uint16)

    @property
    def nodata(self) -> int:
        """The label of nodata pixels: the dtype's largest value."""
        return int(np.iinfo(self.dtype).max)


def _compressor(zarr_format: int, dtype: Any) -> Any:
    """Blosc zstd at level 1: level 3 costs ~3x the CPU for a few percent.

    Labels (one byte, few classes) use bit-shuffle, which packs their few used
    bit planes together: faster and smaller than byte shuffle for masks.
    """
    bits = np.dtype(dtype).itemsize == 1
    shuffle = Blosc.BITSHUFFLE if bits else Blosc.SHUFFLE
    if zarr_format == 2:
        return Blosc(cname="zstd", clevel=1, shuffle=shuffle)
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle" if bits else "shuffle")


def prepare_output(path: str | Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless asked to overwrite, and an unwritable parent.

    A local output may not be a symbolic link; on object storage a prefix's objects go one by one.
    """
    if not is_remote(path) and Path(path).is_symlink():
        raise OutputError(f"{path} is a symbolic link to {Path(path).resolve()}; give that path as the output")
    if not is_remote(path) and Path(path).resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise OutputError(f"{path} is the current directory or one above it; name the store, as in {path}/mask.zarr")
    if not exists(path):
        if is_remote(path):
            remove_tree(path)  # folder markers alone (see location.exists): zarr would take one for a group in itself
    elif cut_short(path):
        remove_tree(path)  # a store whose making was cut short holds nothing yet: made again, no flag needed
    elif not overwrite:
        raise OutputExistsError(
            f"output {path} exists; pass overwrite to replace it or resume to finish it",
            parameters=("overwrite", "resume"),
        )
    elif not is_store(path):
        raise OutputError(f"refusing to overwrite {path}: it is not a gigaseg Zarr store")
    else:
        remove_tree(path)
    check_output_dir(path)


def cut_short(path: str | Path) -> bool:
    """Whether ``path`` holds only what a store's making leaves when it is killed half way: some
    of its arrays' directories, documents and coordinates, but not the group's own document
    (written last), nor a block, nor anything a store does not have.

    Checked only where something that is no store is found (a listing of the prefix).
    """
    if is_store(path):
        return False
    entries = list_entries(path)
    return bool(entries) and all(_drafted(entry.removesuffix("/")) for entry in entries)


def _drafted(name: str) -> bool:
    """Whether ``name`` (relative to the store) is one a store has before its first block."""
    array, _, inside = name.partition("/")
    if not inside:
        return array in DRAFTED_ARRAYS or array == ".zattrs"  # the group's attributes go before .zgroup
    coordinate = array in ("x", "y") and inside in ("0", "c", "c/0")  # zarr v2 and v3 keys of its one chunk
    return array in DRAFTED_ARRAYS and (inside in (".zarray", ".zattrs", "zarr.json") or coordinate)


MEMBERS = ("mask", "probabilities", "blocks_done", "block_counts", "mask" + SUFFIX, "probabilities" + SUFFIX)
DRAFTED_ARRAYS = {*MEMBERS, "spatial_ref", "x", "y"}


def check_output_dir(path: str | Path) -> None:
    """Refuse an output whose directory (or bucket, on object storage) is missing or not writable."""
    check_parent(path)


def is_store(path: str | Path) -> bool:
    return location_is_store(path)


def create_store(path: str | Path, layout: StoreLayout, *, overwrite: bool = False) -> MaskStore:
    """Create an empty, incomplete store for ``layout`` at ``path``."""
    try:
        prepare_output(path, overwrite=overwrite)
        return _create(path, layout)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot create {path}: {e.strerror or e}") from None


def _create(path: str | Path, layout: StoreLayout) -> MaskStore:
    """Draft the store in memory, then write its files (objects) at once.

    Made in place, array by array, each ``create_array`` is a dozen requests in
    turn on object storage (existence checks, parent groups, attributes): about
    100 for a store, ~0.6 s on loopback S3, per scene. The drafted store is two
    dozen small documents, which go out together; ``prepare_output`` has
    already seen that nothing is there.
    """
    documents: dict[str, Any] = {}
    _draft(zarr.storage.MemoryStore(documents), layout)
    files = {key: value.to_bytes() for key, value in documents.items()}
    # The group's own document (.zgroup; zarr.json in v3) last: until it lands the prefix is no
    # store, and a run killed before then leaves what `cut_short` recognises and the rerun replaces.
    group = {key: value for key, value in files.items() if key in (".zgroup", "zarr.json")}
    write_files(path, {key: value for key, value in files.items() if key not in group})
    write_files(path, group)
    return MaskStore(zarr.open_group(str(path), mode="r+"))


def _draft(store: zarr.storage.MemoryStore, layout: StoreLayout) -> None:
    """The whole store for ``layout``, in memory: its metadata, and the coordinates' values."""
    fmt = layout.zarr_format
    group = zarr.open_group(store, mode="w-", zarr_format=fmt)
    dims = ["z", "y", "x"][-len(layout.shape) :]
    mask_attrs = {
        "classes": list(layout.classes),
        "nodata": layout.nodata,
        **class_flags(layout.classes),
        **georef_attrs(layout.georef, layout.shape),
    }
    _array(group, "mask", layout.shape, layout.chunks, layout.dtype, layout.nodata, fmt, dims, mask_attrs)
    if layout.probabilities:
        _probability_array(group, layout, dims)
    if len(layout.shape) == 2 and isinstance(layout.georef, Georef):
        _write_coordinates(group, layout.georef, layout.shape)
    block_dims = [f"block_{d}" for d in dims]
    _array(group, "blocks_done", layout.block_counts, (1,) * len(layout.block_counts), np.uint8, 0, fmt, block_dims)
    _bookkeeping(group, layout.block_counts, len(layout.classes), dims)
    group.attrs["gigaseg"] = {**layout.attrs, "complete": False}


def _bookkeeping(
    group: zarr.Group, blocks: tuple[int, ...], classes: int, dims: list[str], *, missing_only: bool = False
) -> list[str]:
    """Per-block counts and per-chunk checksums: each element its own chunk, written by its own task.

    With ``missing_only``, only the arrays that are gone are made again (empty);
    returns the names made.
    """
    fmt, made = group.metadata.zarr_format, []
    if not (missing_only and "block_counts" in group):
        shape, chunks = (*blocks, classes + 1), (*(1,) * len(blocks), classes + 1)
        _array(
            group, "block_counts", shape, chunks, np.int64, 0, fmt, [*(f"block_{d}" for d in dims), "class_or_nodata"]
        )
        made.append("block_counts")
    for name in ("mask", "probabilities"):
        if name in group and not (missing_only and name + SUFFIX in group):
            grid = chunk_counts(zarrs.array(group, name))
            _array(group, name + SUFFIX, grid, (1,) * len(grid), np.uint64, 0, fmt, [f"chunk_{d}" for d in dims])
            made.append(name + SUFFIX)
    return made


def restore_bookkeeping(path: str | Path) -> list[str]:
    """Make again the counts and checksum arrays of a store that lost them (deleted by hand).

    Their blocks then have no checksums, so a resume writes them again.
    """
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    mask = zarrs.array(group, "mask")
    dims = list(zarrs.attrs(mask).get("_ARRAY_DIMENSIONS", ["z", "y", "x"][-mask.ndim :]))
    classes = len(zarrs.attrs(mask)["classes"])
    return _bookkeeping(group, tuple(zarrs.array(group, "blocks_done").shape), classes, dims, missing_only=True)


def _array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    fill: Any,
    fmt: int,
    dims: list[str],
    attrs: dict[str, Any] | None = None,
) -> zarr.Array:
    """An array named by its dimensions (zarr v3's ``dimension_names``, and xarray's v2 attribute),
    its attributes written with its metadata: one write each, which object storage counts."""
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=[_compressor(fmt, dtype)],
        dimension_names=dims if fmt == 3 else None,
        attributes={"_ARRAY_DIMENSIONS": dims, **(attrs or {})},
        overwrite=True,  # a store's arrays are made once; a lost one is made again over its debris
    )


def _probability_array(group: zarr.Group, layout: StoreLayout, dims: list[str]) -> None:
    kind = layout.probabilities
    if kind not in PROBABILITY_DTYPES:
        raise OutputError(f"probabilities must be one of {sorted(PROBABILITY_DTYPES)}, got {kind!r}")
    classes = len(layout.classes)
    attrs: dict[str, Any] = {"classes": layout.classes}
    if kind == "uint8":
        attrs["scale_factor"] = 1 / 255
    _array(
        group,
        "probabilities",
        (classes, *layout.shape),
        (classes, *layout.chunks),
        PROBABILITY_DTYPES[kind],
        0,
        layout.zarr_format,
        ["class", *dims],
        attrs,
    )


def class_flags(classes: list[str]) -> dict[str, Any]:
    """CF ``flag_values``/``flag_meanings``: label ``i`` is ``classes[i]``, for xarray, cf-xarray and GIS readers.

    ``flag_meanings`` is one word per class, blank-separated: blanks inside a
    class name become underscores (``"built up"`` -> ``built_up``). The nodata
    label is no flag: it is the array's fill value (and ``nodata``).
    """
    return {
        "long_name": "class label",
        "flag_values": list(range(len(classes))),
        "flag_meanings": " ".join("_".join(str(name).split()) or f"class{i}" for i, name in enumerate(classes)),
    }


def georef_attrs(georef: Georef | NiftiRef, shape: tuple[int, ...]) -> dict[str, Any]:
    """Georeferencing attributes in the forms GDAL, xarray and GeoZarr readers look for.

    A NIfTI volume's header goes whole into ``nifti`` (see :class:`NiftiRef`).
    """
    if isinstance(georef, NiftiRef):
        return {"nifti": georef.to_attrs()}
    if len(shape) != 2:
        return {}
    height, width = shape
    t = georef.affine
    corners = [t @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))]
    xs, ys = zip(*corners, strict=True)
    attrs: dict[str, Any] = {
        "grid_mapping": "spatial_ref",
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": list(georef.transform),
        "spatial:shape": [height, width],
        "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
        "spatial:registration": "pixel",
        "zarr_conventions": [{"name": "spatial"}, {"name": "proj"}],
    }
    if georef.crs_wkt:
        attrs["_CRS"] = {"wkt": georef.crs_wkt}
        attrs["proj:wkt2"] = georef.crs_wkt
    return attrs


def _write_coordinates(group: zarr.Group, georef: Georef, shape: tuple[int, int]) -> None:
    a, b, c, d, e, f = georef.transform
    ref_attrs = {
        "GeoTransform": " ".join(repr(float(v)) for v in (c, a, b, f, d, e)),
        **({"crs_wkt": georef.crs_wkt, "spatial_ref": georef.crs_wkt} if georef.crs_wkt else {}),
    }
    _array(group, "spatial_ref", (), (), np.int32, 0, group.metadata.zarr_format, [], ref_attrs)
    if not georef.is_rectilinear:
        return  # rotated grids have no 1-D coordinates; GeoTransform above says it all
    for name, values in coordinates(georef, shape).items():
        fmt = group.metadata.zarr_format
        arr = _array(group, name, values.shape, values.shape, np.float64, np.nan, fmt, [name], {"axis": name.upper()})
        arr[:] = values


def coordinates(georef: Georef, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The pixel centres along ``y`` and ``x`` of a rectilinear grid."""
    a, _, c, _, e, f = georef.transform
    return {"y": pixel_centres(f, e, shape[0]), "x": pixel_centres(c, a, shape[1])}


def pixel_centres(origin: float, step: float, size: int) -> np.ndarray:
    """Pixel-centre coordinates from which GDAL recovers ``origin`` and ``step`` exactly.

    GDAL (3.10) guesses a geotransform from 1-D coordinates as
    ``step = (x[-1] - x[0]) / (size - 1)`` and ``origin = x[0] - step / 2``. Plain
    ``origin + (i + 0.5) * step`` is off by an ulp there, so the two end values
    are nudged by a few ulps until that arithmetic gives the exact numbers back.
    """
    values = origin + (np.arange(size, dtype=np.float64) + 0.5) * step
    if size < 2:
        return values
    for first in _neighbours(values[0]):
        for last in _neighbours(values[-1]):
            guessed = (last - first) / (size - 1)
            if guessed == step and first - guessed / 2 == origin:
                values[0], values[-1] = first, last
                return values
    return values


def _neighbours(value: float, ulps: int = 4) -> list[float]:
    out, lo, hi = [float(value)], float(value), float(value)
    for _ in range(ulps):
        lo, hi = float(np.nextafter(lo, -np.inf)), float(np.nextafter(hi, np.inf))
        out += [lo, hi]
    return out


class MaskStore:
    """An open mask store: write a block's pixels, record it done, finish."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        found = zarrs.members(group, MEMBERS)
        if "blocks_done" not in found and "mask" in found:  # without it nothing says what is written
            raise DamagedStoreError(
                f"{store_path(group)}: its blocks_done array is missing; segment it again with overwrite",
                parameters=("overwrite",),
            )
        self.mask: zarr.Array = zarrs.member(group, found, "mask")
        self.probabilities: zarr.Array | None = zarrs.member(group, found, "probabilities", optional=True)
        self.blocks_done: zarr.Array = zarrs.member(group, found, "blocks_done")
        self.block_counts: zarr.Array | None = zarrs.member(group, found, "block_counts", optional=True)
        self.mask_crc = zarrs.member(group, found, "mask" + SUFFIX, optional=True)
        self.probabilities_crc = zarrs.member(group, found, "probabilities" + SUFFIX, optional=True)
        self._written: np.ndarray | None = None  # chunks that must have checksums, for read()

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(zarrs.attrs(self.group).get("gigaseg", {}))

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def classes(self) -> list[str]:
        return list(zarrs.attrs(self.mask)["classes"])

    @property
    def nodata(self) -> int:
        return int(zarrs.attrs(self.mask)["nodata"])

    @property
    def georef(self) -> Georef:
        attrs = zarrs.attrs(self.mask)
        crs = attrs.get("_CRS", {}).get("wkt")
        transform = attrs.get("spatial:transform", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
        a, b, c, d, e, f = (float(v) for v in transform)
        return Georef(crs, (a, b, c, d, e, f))

    @property
    def nifti(self) -> NiftiRef | None:
        """The input's NIfTI header, for masks of NIfTI volumes."""
        attrs = zarrs.attrs(self.mask).get("nifti")
        return NiftiRef.from_attrs(attrs) if attrs else None

    def write(self, box: Box, labels: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        """Write labels (and probabilities in [0, 1]) of ``box``; whole chunks only.

        zarr writes each chunk to a temporary file and renames it (on object
        storage: one PUT), so a process killed mid-write leaves the old chunk or
        the new one, never half of one.
        """
        with self.io_errors():
            write_checked(self.mask, self.mask_crc, box, labels)
            if self.probabilities is not None and probabilities is not None:
                if self.probabilities.dtype == np.uint8 and probabilities.dtype.kind == "f":
                    probabilities = np.rint(probabilities * 255)  # p in [0, 1] to p x 255
                values = probabilities.astype(self.probabilities.dtype)
                write_checked(self.probabilities, self.probabilities_crc, box, values)

    def read(self, box: Box) -> np.ndarray:
        """Labels of a chunk-aligned ``box``, each chunk checked against its checksum."""
        if self._written is None:
            self._written = self.written_chunks()
        return read_checked(self.mask, self.mask_crc, box, "mask", written=self._written)

    def mark_done(self, index: tuple[int, ...], counts: np.ndarray | None = None) -> None:
        """Record block ``index`` done, with its pixels per class (nodata last) when given."""
        with self.io_errors():
            if counts is not None and self.block_counts is not None:
                self.block_counts[index] = counts
            self.blocks_done[index] = 1

    def counts(self) -> np.ndarray | None:
        """Pixels per class, nodata last, over every block done (None for stores without counts)."""
        if self.block_counts is None:
            return None
        values, _ = read_per_chunk(self.block_counts)
        return values[self.done()].sum(axis=0)

    def verify(self) -> Verification:
        """Decode every chunk whose checksum is recorded and compare (see :mod:`gigaseg.io.checksums`)."""
        found, written = Verification(), self.written_chunks()
        for name, array, crcs in (
            ("mask", self.mask, self.mask_crc),
            ("probabilities", self.probabilities, self.probabilities_crc),
        ):
            if array is not None and crcs is not None:
                found += verify_array(array, crcs, name, written=written)
        return found

    def written_chunks(self) -> np.ndarray | None:
        """Per chunk: whether a block recorded done wrote it (its checksum must be there)."""
        plan = self.attrs.get("plan")
        if not plan:
            return None
        written = self.done()
        for axis, (block, chunk) in enumerate(zip(plan["block"], plan["chunk"], strict=True)):
            written = np.repeat(written, block // chunk, axis=axis)
        return written[tuple(slice(0, n) for n in chunk_counts(self.mask))]

    @property
    def has_checksums(self) -> bool:
        return self.mask_crc is not None

    @contextlib.contextmanager
    def io_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise OutputError(f"cannot write to {store_path(self)}: {e.strerror or e}") from None

    def done(self) -> np.ndarray:
        """Per block: recorded done (a record that cannot be decoded is not done)."""
        values, _ = read_per_chunk(self.blocks_done)
        return values > 0

    def damaged_records(self) -> np.ndarray:
        """Per block: whether its ``blocks_done`` or ``block_counts`` record cannot be decoded."""
        _, bad = read_per_chunk(self.blocks_done)
        if self.block_counts is not None:
            bad = bad | read_per_chunk(self.block_counts)[1].reshape(bad.shape)
        return bad

    def records_problem(self) -> str | None:
        """What is wrong with the store's own records, or None."""
        bad = self.damaged_records()
        if bad.any():
            first = [int(i) for i in np.argwhere(bad)[0]]
            return f"the records of {int(bad.sum())} blocks cannot be decoded (block {first})"
        missing = [
            name + SUFFIX
            for name, array, crcs in (
                ("mask", self.mask, self.mask_crc),
                ("probabilities", self.probabilities, self.probabilities_crc),
            )
            if array is not None and crcs is None
        ]
        if missing:
            return f"{', '.join(missing)} is missing"
        done = self.done()
        if self.complete and not done.all():
            return f"it says complete but records only {int(done.sum())} of {done.size} blocks done"
        lost = self.lost_coordinates()
        if lost:
            return f"its {' and '.join(lost)} coordinates are missing"
        return None

    def lost_coordinates(self) -> list[str]:
        """The coordinate arrays (``y``, ``x``) whose values are gone (a deleted chunk reads as NaN)."""
        found = zarrs.members(self.group, ("y", "x"))
        arrays = {name: node for name, node in found.items() if isinstance(node, zarr.Array)}
        return [name for name, array in arrays.items() if np.isnan(zarrs.read(array)).any()]

    def restore_coordinates(self) -> list[str]:
        """Write again the coordinates :meth:`lost_coordinates` finds, from the mask's georeferencing."""
        lost = self.lost_coordinates()
        values = coordinates(self.georef, self.mask.shape) if lost else {}
        for name in lost:
            zarrs.array(self.group, name)[...] = values[name]
        return lost

    def finish(self, **values: Any) -> None:
        """Mark the store complete, with ``values`` (the summary) in its attributes; only valid
        once every block is done."""
        missing = int((~self.done()).sum())
        if missing:
            raise IncompleteStoreError(f"{missing} blocks are not written yet")
        with self.io_errors():
            self.group.attrs["gigaseg"] = {**self.attrs, **values, "complete": True}
            zarr.consolidate_metadata(self.group.store)

    def set_attrs(self, **values: Any) -> None:
        self.group.attrs["gigaseg"] = {**self.attrs, **values}

    def reopen(self, **values: Any) -> None:
        """Mark a finished store incomplete again while a later stage (refinement) rewrites it.

        The consolidated metadata is rewritten too, so readers never see a stale ``complete``.
        """
        self.set_attrs(**values, complete=False)
        zarr.consolidate_metadata(self.group.store)

    def progress_array(
        self, name: str, counts: tuple[int, ...], *, reset: bool = False, width: int | None = None
    ) -> zarr.Array:
        """A per-block array of a later stage, one chunk per block.

        ``refine_done`` (uint8 flags), or with ``width`` a row of that many
        int64 values per block (``refine_done_counts``: pixels per class, nodata last).
        """
        shape = (*counts, width) if width else tuple(counts)
        existing = zarrs.optional_array(self.group, name)
        if existing is not None and tuple(existing.shape) == shape and not reset:
            return existing
        fmt = self.group.metadata.zarr_format
        dtype = np.int64 if width else np.uint8
        array = self.group.create_array(
            name,
            shape=shape,
            chunks=(*(1,) * len(counts), *((width,) if width else ())),
            dtype=dtype,
            fill_value=0,
            compressors=[_compressor(fmt, dtype)],
            dimension_names=[f"{name}_{i}" for i in range(len(shape))] if fmt == 3 else None,
            overwrite=True,
        )
        array.attrs["_ARRAY_DIMENSIONS"] = [f"{name}_{i}" for i in range(len(shape))]
        return array


def store_path(store: MaskStore | zarr.Group) -> str:
    """Where a store (or its group) lives: its directory, or its URL."""
    where = (store.group if isinstance(store, MaskStore) else store).store
    root = getattr(where, "root", None)
    if root is not None:
        return str(root)
    fs, path = getattr(where, "fs", None), getattr(where, "path", None)
    if fs is not None and path is not None:  # zarr's FsspecStore: s3://bucket/prefix/out.zarr
        return str(fs.unstrip_protocol(path))
    return str(where)


def remove_partials(path: str | Path) -> int:
    """Delete temporary chunk files (``*.partial``) a killed writer left behind.

    On object storage there are none: each chunk is one PUT, which stores the
    whole object or nothing.
    """
    if is_remote(path):
        return 0
    stray = list(Path(path).rglob("*.partial"))
    for file in stray:
        file.unlink(missing_ok=True)
    return len(stray)


def open_store(
    path: str | Path, *, mode: Literal["r", "r+", "a", "w", "w-"] = "r", require_complete: bool = False
) -> MaskStore:
    """Open an existing store (a directory or a URL); with ``require_complete``, refuse one never finished."""
    if not exists(path):
        raise SourceError(f"{path} does not exist")
    if not is_store(path):
        raise SourceError(f"{path} is not a gigaseg Zarr store")
    try:
        group = zarr.open_group(str(path), mode=mode)
        ours = "gigaseg" in group.attrs and "mask" in group
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise SourceError(f"{path}: its Zarr metadata cannot be read ({type(e).__name__}: {e})") from None
    if not ours:
        raise SourceError(f"{path} is a Zarr store but not one gigaseg wrote")
    store = MaskStore(group)
    if require_complete and not store.complete:
        done = store.done()
        raise IncompleteStoreError(
            f"{path} is incomplete ({int(done.sum())} of {done.size} blocks written); "
            "finish it with resume, or pass allow_incomplete",
            parameters=("resume", "allow_incomplete"),
        )
    return store


def verify_store(path: str | Path) -> Verification:
    """Check every chunk of the store at ``path`` against its recorded checksum.

    Raises :class:`DamagedStoreError` naming the damage, or when the store
    predates checksums; returns what was checked otherwise.
    """
    store = open_store(path)
    if not store.has_checksums and not store.attrs.get("fingerprint"):
        raise DamagedStoreError(
            f"{path} was written by an older gigaseg without chunk checksums; it cannot be verified"
        )
    problem = store.records_problem()
    if problem:
        raise DamagedStoreError(
            f"{path} is damaged: {problem}; segmenting again with resume writes such blocks again",
            parameters=("resume",),
        )
    found = store.verify()
    if found.damaged:
        first = found.damaged[0].line()
        raise DamagedStoreError(
            f"{path}: {len(found.damaged)} of {found.checked + found.unrecorded} chunks do not hold what was "
            f"written ({first}{', ...' if len(found.damaged) > 1 else ''}); segment again "
            "with resume to write them again",
            parameters=("resume",),
        )
    return found

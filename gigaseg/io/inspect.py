"""A plain-data description of a mask store, for ``gigaseg info``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gigaseg.io.store import open_store


def describe_store(path: str | Path) -> dict[str, Any]:
    """Shape, classes, progress and provenance of a store; where it lies in space.

    A raster's store gives its ``crs`` and 6-term ``transform``; a NIfTI volume's
    gives the ``affine`` (4x4, voxel indices i, j, k to world millimetres), the
    ``orientation`` codes of i, j, k (``RAS``, ``LPS``...) and ``voxel_sizes_mm``.
    """
    store = open_store(path)
    attrs = store.attrs
    done = store.done()
    georef = store.georef
    record = {
        "path": str(path),
        "complete": store.complete,
        "blocks_done": f"{int(done.sum())}/{done.size}",
        "shape": list(store.mask.shape),
        "chunks": list(store.mask.chunks),
        "dtype": str(store.mask.dtype),
        "nodata": store.nodata,
        "classes": store.classes,
        "crs": georef.crs_wkt.split('"')[1] if georef.crs_wkt else None,
        "transform": list(georef.transform),
        "probabilities": str(store.probabilities.dtype) if store.probabilities is not None else None,
        "input": attrs.get("input"),
        "model": attrs.get("model"),
        "plan": attrs.get("plan"),
        "summary": attrs.get("summary"),
        "provenance": attrs,
    }
    nifti = store.nifti
    if nifti is not None:  # a volume: the NIfTI grid in place of a CRS and a 2-D transform
        del record["crs"], record["transform"]
        record |= {
            "axes": ["k", "j", "i"],  # the store's (and shape's) order; the affine maps (i, j, k)
            "affine": [list(row) for row in nifti.affine],
            "orientation": nifti.orientation,
            "voxel_sizes_mm": [size * nifti.mm_per_unit for size in nifti.voxel_sizes],
            "affine_source": nifti.affine_source,
        }
    return record

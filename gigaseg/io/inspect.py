"""A plain-data description of a mask store, for ``gigaseg info``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gigaseg.io.store import open_store


def describe_store(path: str | Path) -> dict[str, Any]:
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
    if nifti is not None:  # a volume: the NIfTI grid instead of a CRS
        record |= {
            "orientation": nifti.orientation,
            "voxel_sizes": list(nifti.voxel_sizes),
            "affine_source": nifti.affine_source,
        }
    return record

"""gigaseg: segment scenes too big for memory.

The public doors, one per room::

    import gigaseg

    summary = gigaseg.segment("scene.tif", "model.pt", "mask.zarr", gigaseg.SegmentOptions(tile=512))
    store = gigaseg.open_store("mask.zarr")

Names are imported on first use (PEP 562), so ``import gigaseg`` stays light
and the CLI starts without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("gigaseg")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

# name -> the module that declares it
_EXPORTS = {
    # jobs: one scene, many scenes
    "segment": "gigaseg.jobs.segment",
    "Summary": "gigaseg.jobs.segment",
    "SegmentOptions": "gigaseg.jobs.options",
    "run_job": "gigaseg.jobs.runner",
    "load_job": "gigaseg.jobs.jobfile",
    # io: inputs and the output store
    "open_source": "gigaseg.io.sources",
    "Source": "gigaseg.io.sources",
    "open_store": "gigaseg.io.store",
    "MaskStore": "gigaseg.io.store",
    "verify_store": "gigaseg.io.store",
    "export_mask": "gigaseg.io.export",
    # models
    "create_model": "gigaseg.models",
    "load_checkpoint": "gigaseg.models",
    "save_checkpoint": "gigaseg.models",
    "ModelCard": "gigaseg.models",
    # refine
    "RefineOptions": "gigaseg.refine",
    # errors
    "GigasegError": "gigaseg.errors",
    "InputError": "gigaseg.errors",
    "SourceError": "gigaseg.errors",
    "ModelError": "gigaseg.errors",
    "OutputError": "gigaseg.errors",
    "OutputExistsError": "gigaseg.errors",
    "IncompleteStoreError": "gigaseg.errors",
    "StoreLockedError": "gigaseg.errors",
    "DamagedStoreError": "gigaseg.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from gigaseg.errors import (
        DamagedStoreError,
        GigasegError,
        IncompleteStoreError,
        InputError,
        ModelError,
        OutputError,
        OutputExistsError,
        SourceError,
        StoreLockedError,
    )
    from gigaseg.io.export import export_mask
    from gigaseg.io.sources import Source, open_source
    from gigaseg.io.store import MaskStore, open_store, verify_store
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.options import SegmentOptions
    from gigaseg.jobs.runner import run_job
    from gigaseg.jobs.segment import Summary, segment
    from gigaseg.models import ModelCard, create_model, load_checkpoint, save_checkpoint
    from gigaseg.refine import RefineOptions


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gigaseg' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

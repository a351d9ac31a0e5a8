"""Per-thread file handles that survive pickling (for Dask) by being reopened."""

from __future__ import annotations

import threading
from typing import Any


class ThreadLocalHandles:
    """Mixin: ``self._local`` holds this thread's open handles; pickles drop them.

    rasterio datasets and memory maps are neither thread-safe nor picklable, so a
    source keeps only its path and options in its state and reopens on demand.
    """

    _local: threading.local

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

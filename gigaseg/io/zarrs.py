"""Typed access to Zarr nodes: members that must be arrays, values read as numpy, attributes.

zarr types ``group[name]`` as ``Array | Group``, ``array[selection]`` as any
array-like or scalar, and attributes as JSON. gigaseg's stores know which they
hold; these helpers say so in one place, with a clear error where a store
holds something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from gigaseg.errors import SourceError


def array(group: zarr.Group, name: str) -> zarr.Array:
    """``group[name]``, which must be an array (``KeyError`` when it is missing)."""
    return _checked(group, name, group[name])


def optional_array(group: zarr.Group, name: str) -> zarr.Array | None:
    """``group[name]`` when it exists, which must then be an array; else None."""
    found = group.get(name)
    return None if found is None else _checked(group, name, found)


def read(node: zarr.Array, selection: Any = Ellipsis) -> np.ndarray:
    """``node[selection]`` as a numpy array (zarr returns one already: no copy)."""
    return np.asarray(node[selection])


def attrs(node: zarr.Array | zarr.Group) -> Mapping[str, Any]:
    """A node's attributes, read as untyped JSON values (what gigaseg wrote there)."""
    return node.attrs


def _checked(group: zarr.Group, name: str, found: zarr.Array | zarr.Group) -> zarr.Array:
    if not isinstance(found, zarr.Array):
        raise SourceError(f"{group.store_path}: {name} is a Zarr group where an array was expected")
    return found

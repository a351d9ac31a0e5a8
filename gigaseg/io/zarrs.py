"""Typed access to Zarr nodes: members that must be arrays, values read as numpy, attributes.

zarr types ``group[name]`` as ``Array | Group``, ``array[selection]`` as any
array-like or scalar, and attributes as JSON. gigaseg's stores know which they
hold; these helpers say so in one place, with a clear error where a store
holds something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, overload

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


def members(group: zarr.Group, names: tuple[str, ...]) -> dict[str, zarr.Array | zarr.Group]:
    """The members of ``group`` among ``names`` that exist, looked up at once.

    Each lookup reads a node's metadata documents; on object storage those are a
    few requests each, so one thread per name turns a dozen round trips into one.
    (zarr's own ``Group.members`` lists the prefix first, and warns of anything
    there that is not a node.)
    """
    with ThreadPoolExecutor(len(names)) as pool:
        found = dict(zip(names, pool.map(group.get, names), strict=True))
    return {name: node for name, node in found.items() if node is not None}


@overload
def member(
    group: zarr.Group, found: Mapping[str, zarr.Array | zarr.Group], name: str, *, optional: Literal[False] = False
) -> zarr.Array: ...
@overload
def member(
    group: zarr.Group, found: Mapping[str, zarr.Array | zarr.Group], name: str, *, optional: Literal[True]
) -> zarr.Array | None: ...
def member(
    group: zarr.Group, found: Mapping[str, zarr.Array | zarr.Group], name: str, *, optional: bool = False
) -> zarr.Array | None:
    """``found[name]`` (from :func:`members`), which must be an array; None when missing and ``optional``."""
    if name not in found:
        if optional:
            return None
        raise KeyError(name)
    return _checked(group, name, found[name])


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

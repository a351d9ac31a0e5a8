"""MONAI bundles as models: the loader lands in the next commit."""

from __future__ import annotations


def is_bundle(path: str) -> bool:
    return False

"""MONAI bundles as models (in progress)."""

from __future__ import annotations

from pathlib import Path


def is_bundle(path: str) -> bool:
    return (Path(path) / "configs" / "metadata.json").is_file()

"""nnU-Net v2 result folders as models (in progress)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIGURATION = "3d_fullres"


def is_nnunet(path: str) -> bool:
    return (Path(path) / "plans.json").is_file() and (Path(path) / "dataset.json").is_file()

"""nnU-Net v2 result folders as models: the loader lands in the next commit."""

from __future__ import annotations

DEFAULT_CONFIGURATION = "3d_fullres"


def is_nnunet(path: str) -> bool:
    return False

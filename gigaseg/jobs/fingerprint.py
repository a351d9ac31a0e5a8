"""A store's fingerprint: its input, its weights and every option that changes pixels.

Written when the store is created. ``--resume`` compares it with what it is
given now and refuses, naming each difference, when anything differs: a
resumed store must hold the output of one input, one model and one set of
options, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gigaseg.errors import InputError
from gigaseg.io.identity import file_identity, remote_identity
from gigaseg.io.remote import is_local
from gigaseg.io.stac import is_stac, stac_identity
from gigaseg.models.formats import model_sha256


def fingerprint(
    input_path: str | Path, model_path: str | Path, options: dict[str, Any], *, folds: list[str] | None = None
) -> dict[str, Any]:
    """``input`` (size, mtime, sampled bytes), ``weights`` (sha256; with a card's ``folds`` beside a model
    file, theirs too) and the pixel-changing ``options``."""
    weights: dict[str, Any] = {"sha256": weights_sha256(model_path)}
    model = str(model_path)
    if folds and not model.startswith("module:") and os.path.isfile(model):
        weights["folds"] = {name: model_sha256(str(Path(model).parent / name)) for name in folds}
    return json.loads(json.dumps({"input": input_identity(input_path), "weights": weights, "options": options}))


def input_identity(path: str | Path) -> dict[str, Any]:
    """A local file's size and hash (:func:`file_identity`); a URL's or ``/vsi`` path's size and version
    (:func:`remote_identity`); a STAC item's JSON and asset hrefs; else (a directory) its path."""
    if is_stac(path):
        return stac_identity(path)
    if not is_local(path):
        return remote_identity(path)
    return file_identity(path) if os.path.isfile(path) else {"path": str(path)}


def weights_sha256(path: str | Path) -> str:
    """The model's bytes: a file's sha256, a folder's files', or a module's weights' (:func:`model_sha256`)."""
    return model_sha256(path)


def differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: stored -> current`` for every leaf that differs, keys dotted."""
    found = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text[:13] + "..." if len(text) > 40 and isinstance(value, str) else text


def check_fingerprint(
    output: str | Path, stored: dict[str, Any] | None, current: dict[str, Any], *, ignore: tuple[str, ...] = ()
) -> None:
    """Refuse to resume ``output`` unless it was started with exactly this input, model and options.

    ``ignore``: key prefixes left out of the comparison (what a dry run cannot know).
    """
    if stored is None:
        raise InputError(
            f"cannot resume {output}: it was written by an older gigaseg without a fingerprint of its input, "
            "model and options; use overwrite to start again",
            parameters=("overwrite",),
        )
    changed = [d for d in differences(stored, current) if not d.startswith(ignore)]
    if changed:
        raise InputError(
            f"cannot resume {output}: changed since it was started: {'; '.join(changed)}; "
            "resume with what it was started with, or use overwrite to start again",
            parameters=("overwrite",),
        )

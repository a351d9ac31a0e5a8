"""Writing a card into a model file: TorchScript and ``.pt2`` extra files, ONNX metadata, checkpoints."""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from gigaseg.errors import GigasegError, ModelError, OutputError
from gigaseg.models.card import ModelCard, read_card_json
from gigaseg.models.formats import CARD_ENTRY, card_layers, model_format, open_model, sidecar
from gigaseg.models.runtimes import ONNX_EXTRA


def embed_card(model: str | Path, card: str | Path, output: str | Path) -> ModelCard:
    """Write ``model`` to ``output`` carrying ``card``'s keys (over any card it carried), atomically.

    The card is checked first: with what the model says, it must be a whole, valid card.
    """
    model, output = str(model), str(output)
    keys = read_card_json(card)
    fmt = model_format(model)
    writers = {"torchscript": _torchscript, "torch.export": _exported, "onnx": _onnx, "gigaseg": _checkpoint}
    if fmt not in writers:
        raise ModelError(f"{model} ({fmt}) has no place for a card; put it beside the model as {sidecar(model)}")
    keys = {**_embedded_keys(model, fmt, keys), **keys}
    checked = open_model(model, card=keys, embedded=False).card  # every key valid, nothing missing
    partial = str(Path(output).with_name(f".{Path(output).stem}.partial{Path(output).suffix}"))
    try:
        with warnings.catch_warnings():  # torch's notes on its own file formats are not the user's business
            warnings.simplefilter("ignore")
            writers[fmt](model, keys if fmt != "gigaseg" else checked.to_dict(), partial)
        os.replace(partial, output)
    except OSError as e:
        raise OutputError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return checked


def _embedded_keys(model: str, fmt: str, keys: dict[str, Any]) -> dict[str, Any]:
    """The card the model carries, where it is readable and valid with ``keys`` over it; else nothing
    (embedding is how a damaged or outdated card is replaced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layers = card_layers(model, fmt)
            embedded = {k: v for where, layer in layers if CARD_ENTRY in where for k, v in layer.items()}
            open_model(model, card={**embedded, **keys}, embedded=False)
    except GigasegError:
        return {}
    return embedded


def _extras(path: str) -> dict[str, Any]:
    """The extra files an archive carries besides the card (a MONAI bundle's metadata, ...), to keep them."""
    with zipfile.ZipFile(path) as archive:
        names = [n.split("/extra/", 1)[1] for n in archive.namelist() if "/extra/" in n]
    return dict.fromkeys((n for n in names if n and n != CARD_ENTRY), "")


def _torchscript(model: str, keys: dict[str, Any], out: str) -> None:
    extra = _extras(model)
    module = torch.jit.load(model, map_location="cpu", _extra_files=extra)
    torch.jit.save(module, out, _extra_files={**extra, CARD_ENTRY: json.dumps(keys)})


def _exported(model: str, keys: dict[str, Any], out: str) -> None:
    extra = _extras(model)
    program = torch.export.load(model, extra_files=extra)
    torch.export.save(program, out, extra_files={**extra, CARD_ENTRY: json.dumps(keys)})


def _onnx(model: str, keys: dict[str, Any], out: str) -> None:
    try:
        import onnx
    except ImportError:
        raise ModelError(f"writing a card into an ONNX model needs the onnx package: {ONNX_EXTRA}") from None
    proto = onnx.load(model)
    kept = [p for p in proto.metadata_props if p.key != CARD_ENTRY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=CARD_ENTRY, value=json.dumps(keys))
    onnx.save(proto, out)


def _checkpoint(model: str, card: dict[str, Any], out: str) -> None:
    data = torch.load(model, map_location="cpu", weights_only=True)
    torch.save({**data, "card": card}, out)

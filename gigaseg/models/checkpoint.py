"""Checkpoint files: weights plus the model card, in one torch file."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gigaseg.errors import ModelError, SourceError
from gigaseg.models.card import ModelCard
from gigaseg.models.registry import create_model

FORMAT = "gigaseg-checkpoint/1"


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    card: ModelCard,
    *,
    half: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights and card atomically (a killed save never leaves half a file).

    ``half`` stores floating-point weights as float16 (half the file; loading
    casts them back into the float32 network). ``extra`` entries (optimizer
    state, epoch, ...) go into the same file; loading ignores them.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    data = {**(extra or {}), "format": FORMAT, "card": card.to_dict(), "state_dict": state}
    torch.save(data, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; clear errors for files that are not one."""
    path = str(path)
    if os.path.isdir(path):
        raise SourceError(f"model {path} is a directory, not a checkpoint file (.pt)")
    if not os.path.isfile(path):
        raise SourceError(f"model {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's unpickler fails on garbage in many ways (KeyError, ...)
        raise ModelError(unreadable(path, e)) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a {type(data).__name__}, not a checkpoint")
    return data


def unreadable(path: str, error: Exception) -> str:
    """One line of our own: never torch's advice to load with ``weights_only=False``."""
    text = str(error).strip()
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if isinstance(error, pickle.UnpicklingError) and unsafe:
        return (
            f"{path} holds a pickled Python object ({unsafe.group(1)}), not only tensors and plain values: "
            "loading it could run code, and gigaseg loads only tensors; where you trust its source, load it "
            "with torch and export the network: torch.jit.save(torch.jit.script(model), 'model.ts'), "
            "torch.export.save, torch.onnx.export, or torch.save(model.state_dict(), path) with a card"
        )
    if "WeightsUnpickler error:" in text:  # what the unpickler met, between paragraphs of advice
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    first = text.splitlines()[0][:200] if text else ""
    first = f"{type(error).__name__}: {first}" if first and "weights_only" not in first else type(error).__name__
    return f"{path} is not a checkpoint torch can read: {first}"


def load_checkpoint(path: str | Path, *, card: ModelCard | None = None) -> tuple[nn.Module, ModelCard]:
    """Build the network a checkpoint describes and load its weights.

    A gigaseg checkpoint carries its card. A plain state_dict (trained elsewhere,
    e.g. with segmentation-models-pytorch) needs ``card`` to say what it is.
    """
    data = read_checkpoint(path)
    if data.get("format") == FORMAT:
        card = card or ModelCard.from_dict(data["card"])  # validates the card
        state = data["state_dict"]
    elif card is not None:
        state = data.get("state_dict", data)
    else:
        raise ModelError(f"{path} is a plain state_dict without a ModelCard; give one with card", parameters=("card",))
    model = create_model(card)
    load_weights(model, state, path, card)
    return model.eval(), card


def load_weights(model: nn.Module, state: dict[str, Any], path: Any, card: ModelCard) -> None:
    try:
        with warnings.catch_warnings():  # smp prints a block of its own; the line below says what does not fit
            warnings.simplefilter("ignore")
            result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch reports shape mismatches this way
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e))
        raise ModelError(f"weights in {path} do not fit their card: {detail}") from None
    problems = [f"{len(result.missing_keys)} missing"] if result.missing_keys else []
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected")
    if problems:
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise ModelError(
            f"weights in {path} do not fit a {card.arch} with {card.in_channels} channels and "
            f"{card.num_classes} classes ({', '.join(problems)} keys, e.g. {example!r})"
        )


def init_checkpoint(
    path: str | Path,
    *,
    arch: str,
    in_channels: int,
    classes: list[str],
    encoder: str | None = None,
    tile: int = 512,
    overlap: int = 64,
    seed: int = 0,
    **card_fields: Any,
) -> ModelCard:
    """Write a seeded, untrained checkpoint: the same seed gives the same weights.

    The card's ``spatial_dims`` defaults to the architecture's (3 for ``unet3d``).
    """
    from gigaseg.models.registry import SPATIAL_DIMS

    card_fields.setdefault("spatial_dims", SPATIAL_DIMS.get(arch, 2))
    card = ModelCard(
        arch=arch,
        encoder=encoder,
        in_channels=in_channels,
        classes=classes,
        tile=tile,
        overlap=overlap,
        **card_fields,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(card)
    save_checkpoint(path, model, card)
    return card

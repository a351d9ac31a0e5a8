"""Pretrained encoder weights from a local file, never from a hub.

smp and timm download encoder weights at run time, which clusters without
internet cannot do; gigaseg builds every network with ``encoder_weights=None``.
:func:`load_encoder_weights` puts a state dict saved elsewhere (timm's, smp's, a
whole smp model's, ``.pt``/``.pth`` or ``.safetensors``) into a model's
``encoder``: key names are matched with or without the ``encoder.`` prefix of a
whole smp model and the ``model.`` prefix of smp's ``tu-`` (timm) encoders,
classifier heads the encoder lacks are dropped, and every shape must fit except
the first convolution's input channels, which are adapted as smp's
``patch_first_conv`` does for 3-band weights: 1 band sums the RGB kernels; 2 or
more than 3 bands repeat them cyclically, scaled by ``3 / bands``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gigaseg.errors import ModelError, SourceError

PREFIXES = ("", "encoder.", "model.", "encoder.model.", "module.", "module.encoder.")
WRAPPERS = ("state_dict", "model", "model_state_dict")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a torch file (a state dict, or one wrapped in a dict)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SourceError(f"encoder weights {path} do not exist") from None
    except Exception as e:  # any unreadable file is one message
        raise ModelError(f"cannot read encoder weights {path}: {str(e).splitlines()[0]}") from None
    for key in WRAPPERS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"encoder weights {path} hold no state dict (a mapping of names to tensors)")
    return dict(data)


def adapt_first_conv(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """3-band kernels ``(out, 3, k, k)`` for ``bands`` input bands, as smp's ``patch_first_conv``."""
    if bands == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(bands) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / bands)


def load_encoder_weights(model: nn.Module, path: str | Path, *, encoder: str | None = None) -> str:
    """Load ``path`` into ``model.encoder`` (see the module docstring); its sha256."""
    target = getattr(model, "encoder", None)
    if not isinstance(target, nn.Module) or not hasattr(target, "out_channels"):
        raise ModelError(
            f"encoder_weights needs a 2-D network with an smp encoder; {type(model).__name__} has none",
            parameters=("encoder_weights",),
        )
    wanted = target.state_dict()
    state = _match_names(read_state_dict(path), wanted, path, encoder)
    first = _first_conv(target)
    for name, tensor in state.items():
        shape = tuple(wanted[name].shape)
        if tuple(tensor.shape) == shape:
            continue
        if name == first and tensor.ndim == 4 and tensor.shape[1] == 3 and tensor.shape[0] == shape[0]:
            state[name] = adapt_first_conv(tensor, shape[1])
            continue
        raise ModelError(
            f"encoder weights {path} do not fit encoder {encoder}: {name} has shape {tuple(tensor.shape)}, "
            f"the encoder needs {shape}; give weights of the same encoder"
        )
    target.load_state_dict({k: v.to(wanted[k].dtype) for k, v in state.items()})
    return file_sha256(path)


def _match_names(
    found: dict[str, torch.Tensor], wanted: Mapping[str, torch.Tensor], path: str | Path, encoder: str | None
) -> dict[str, torch.Tensor]:
    """``found`` renamed to the encoder's keys under the prefix that matches most of them.

    Tensors of stages the encoder lacks (a classifier head, the stages a shallower
    ``encoder_depth`` drops) are left out; any other tensor without a place, or a
    missing one, means other weights than the encoder's.
    """
    best: dict[str, torch.Tensor] = {}
    for strip in PREFIXES:
        for add in ("", "model."):
            renamed = {add + k[len(strip) :]: v for k, v in found.items() if k.startswith(strip)}
            if sum(k in wanted for k in renamed) > sum(k in wanted for k in best):
                best = renamed
    stages = {_stage(k) for k in wanted}
    missing = [k for k in wanted if k not in best and not k.endswith("num_batches_tracked")]
    extra = [k for k in best if k not in wanted and _stage(k) in stages]
    if missing or extra:
        problem = (
            f"{len(missing)} of its {len(wanted)} tensors are missing (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} tensors have no place in it (e.g. {extra[0]})"
        )
        raise ModelError(
            f"encoder weights {path} do not fit encoder {encoder}: {problem}; give weights of the same encoder"
        )
    return {k: v for k, v in best.items() if k in wanted}


def _stage(key: str) -> str:
    """The top-level part of a tensor's name (under timm's ``model.``): ``layer1``, ``fc``."""
    parts = key.split(".")
    return parts[1] if parts[0] == "model" and len(parts) > 1 else parts[0]


def _first_conv(encoder: nn.Module) -> str | None:
    """The name of the weight of the encoder's first 2-D convolution."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None

"""Model formats: what a file or folder holds, the card it carries, the network it makes.

A format's loader answers three questions: what card the model carries, how to
make the network (an ``nn.Module`` the :class:`~gigaseg.models.inference.Predictor`
runs), and which bytes identify it (:func:`model_sha256`). Formats are recognised
by content, never by suffix:

* ``gigaseg``: a checkpoint with its card (``save_checkpoint``);
* ``state_dict``: a plain torch state dict (``.pt``/``.pth``) or a ``.safetensors``
  file of a registered architecture, with a card;
* ``torchscript``: ``torch.jit.save`` archives (MONAI bundles' ``model.ts``);
* ``torch.export``: ``torch.export.save`` programs (``.pt2``);
* ``onnx``: ONNX models, run by ONNX Runtime (the ``gigaseg[onnx]`` extra);
* ``smp``: segmentation-models-pytorch ``save_pretrained`` folders;
* ``module``: an ``nn.Module`` handed to the Python API (:func:`register_module`).

Nothing is unpickled beyond tensors: TorchScript, ``.pt2``, ONNX and safetensors
need no pickle, and torch files load with ``weights_only``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gigaseg.errors import GigasegWarning, InputError, ModelError, SourceError
from gigaseg.io.identity import file_sha256
from gigaseg.models.card import ModelCard, parse_card, read_card_json
from gigaseg.models.checkpoint import FORMAT as CHECKPOINT
from gigaseg.models.checkpoint import load_weights, unreadable
from gigaseg.models.ensemble import Ensemble
from gigaseg.models.registry import create_model
from gigaseg.models.runtimes import Exported, OnnxModule, onnx_session

CARD_ENTRY = "gigaseg_card.json"  # the card's name in TorchScript / .pt2 extra files and ONNX metadata
GRAPH_LAYER = "(the graph's input shape)"  # how the card's layer from a graph's fixed shape is named
FORMATS = ("gigaseg", "state_dict", "torchscript", "torch.export", "onnx", "smp", "monai_bundle", "nnunet", "module")
EXPORT_HINT = (
    "export the network instead: torch.jit.save(torch.jit.script(model)), torch.export.save, "
    "torch.onnx.export, or save model.state_dict() with a card"
)


@dataclass
class Graph:
    """What the file says its graph takes and gives: ``(N, C, *spatial)``, None where dynamic or unsaid."""

    inputs: list[int | None] | None = None
    outputs: list[int | None] | None = None

    def line(self) -> str:
        def shape(dims: list[int | None] | None) -> str:
            return "not stated" if dims is None else "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"

        return f"input {shape(self.inputs)}, output {shape(self.outputs)}"


@dataclass
class LoadedModel:
    """A model ready for a Predictor: its network, its card in force, and where each card key came from."""

    path: str
    format: str
    module: nn.Module
    card: ModelCard
    sources: dict[str, str] = field(default_factory=dict)
    graph: Graph = field(default_factory=Graph)


# --------------------------------------------------------------------------- recognising


def detect_format(path: str | Path) -> str:
    """The format of the model at ``path``, by its content; one line for anything else."""
    path = str(path)
    if path.startswith("module:"):
        return "module"
    if os.path.isdir(path):
        from gigaseg.models import bundle, nnunet

        if _smp_config(path) is not None:
            return "smp"
        if bundle.is_bundle(path):
            return "monai_bundle"
        if nnunet.is_nnunet(path):
            return "nnunet"
        raise ModelError(
            f"model {path} is a folder but not one gigaseg reads: a segmentation-models-pytorch save_pretrained "
            "folder (config.json and model.safetensors), a MONAI bundle (configs/metadata.json) or an nnU-Net v2 "
            "result folder (plans.json, dataset.json, fold_N/)"
        )
    if not os.path.isfile(path):
        raise SourceError(f"model {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path)
    if head[:1] == b"\x80":  # torch.save's older, plain-pickle layout
        return "torch"
    if _is_safetensors(head):
        return "safetensors"
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), as every ONNX ModelProto starts
        return "onnx"
    raise ModelError(
        f"{path} is not a model gigaseg can read: not a torch file, TorchScript, torch.export (.pt2), "
        "ONNX or safetensors"
    )


def _zip_format(path: str) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile as e:
        raise ModelError(f"{path} is a damaged archive: {e}") from None
    if any("/code/__torch__" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names):
        return "torch.export"
    return "torch"


def _is_safetensors(head: bytes) -> bool:
    size = int.from_bytes(head[:8], "little")
    return len(head) > 8 and 0 < size < 100_000_000 and head[8:9] == b"{"


def _smp_config(path: str) -> dict[str, Any] | None:
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return values if isinstance(values, dict) and "_model_class" in values else None


# --------------------------------------------------------------------------- modules from the API

_MODULES: dict[str, nn.Module] = {}


def register_module(module: nn.Module) -> str:
    """An ``nn.Module`` handed to :func:`gigaseg.segment`, kept in this process under a name
    made of its weights' digest (``module:<sha256>``), which the store's fingerprint records."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    name = f"module:{digest.hexdigest()}"
    _MODULES.pop(name, None)
    _MODULES[name] = module
    while len(_MODULES) > 4:  # the latest few: a loop over many modules does not keep them all alive
        _MODULES.pop(next(iter(_MODULES)))
    return name


# --------------------------------------------------------------------------- identity


def model_sha256(path: str | Path) -> str:
    """The sha256 of a model file, of a folder's files (names and contents), or of a module's weights."""
    path = str(path)
    if path.startswith("module:"):
        return path.removeprefix("module:")
    if not os.path.isdir(path):
        return _file_sha256(path)
    digest = hashlib.sha256()
    for name, file in folder_files(path):
        digest.update(f"{name}\0{_file_sha256(str(file))}\n".encode())
    return digest.hexdigest()


def folder_files(path: str | Path) -> list[tuple[str, Path]]:
    """A model folder's files that make the model, by relative name, sorted, symlinked folders followed
    (nnU-Net result folders often link their folds). Of an nnU-Net folder the plans, dataset.json and
    final checkpoints only (not its validation predictions, best checkpoints or logs), of a MONAI bundle
    its configs and models: what is hashed for resume and shipped to a cluster's workers."""
    keep = _MODEL_FILES.get(detect_format(path), lambda name: True)
    found = []
    for root, _, names in os.walk(path, followlinks=True):
        for name in names:
            file = Path(root) / name
            relative = file.relative_to(path).as_posix()
            if file.is_file() and keep(relative):
                found.append((relative, file))
    return sorted(found)


_MODEL_FILES: dict[str, Callable[[str], bool]] = {
    "nnunet": lambda name: (
        name.rsplit("/", 1)[-1] in ("plans.json", "dataset.json")
        or (name.endswith("/checkpoint_final.pth") and name.split("/")[-2].startswith("fold_"))
    ),
    "monai_bundle": lambda name: name.startswith(("configs/", "models/")),
}


def _file_sha256(path: str) -> str:
    stat = os.stat(path)
    return _cached_sha256(str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process and file version: a job's scenes share one model."""
    return file_sha256(path)


# --------------------------------------------------------------------------- cards


def card_layers(
    path: str,
    fmt: str,
    override: dict[str, Any] | None = None,
    *,
    embedded: bool = True,
    configuration: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """``(where, keys)`` from first to last; later layers win key by key.

    The format's own card (a checkpoint's, an embedded ``gigaseg_card.json``, smp's
    ``config.json``, what the graph's shapes say), then ``<model>.card.json`` beside
    the model, then ``override`` (``--card``).
    """
    layers = [(f"the {fmt} format", {"arch": fmt})] if fmt not in ("gigaseg", "state_dict", "smp") else []
    own = _own_layers(path, fmt, configuration)
    layers += [(w, keys) for w, keys in own if embedded or CARD_ENTRY not in w]
    beside = sidecar(path)
    if beside is not None and os.path.isfile(beside):
        layers.append((beside, read_card_json(beside)))
    if override:
        layers.append(("--card", dict(override)))
    return layers


def sidecar(path: str) -> str | None:
    """``<model file or folder>.card.json``, where a card for a model that carries none is looked for."""
    if path.startswith("module:"):
        return None
    if "://" in path:
        return path.rstrip("/") + ".card.json"
    return str(Path(path).absolute()).rstrip("/") + ".card.json"  # "." is the folder's name, not ".."


def _own_layers(path: str, fmt: str, configuration: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    if fmt == "monai_bundle":
        from gigaseg.models.bundle import bundle_card

        return [(f"{path} (its configs)", bundle_card(path))]
    if fmt == "nnunet":
        from gigaseg.models.nnunet import DEFAULT_CONFIGURATION, nnunet_card

        chosen = configuration or DEFAULT_CONFIGURATION
        return [(f"{path} (plans.json, {chosen})", nnunet_card(path, chosen))]
    if configuration is not None:
        raise InputError(
            f"configuration chooses an nnU-Net configuration; {path} is a {fmt} model", parameters=("configuration",)
        )
    if fmt == "gigaseg":
        return [(f"{path} (its checkpoint card)", _torch_file(path)["card"])]
    if fmt == "smp":
        return [(f"{path}/config.json", smp_card(_smp_config(path) or {}))]
    if fmt == "onnx":
        session = onnx_session(path, device=torch.device("cpu"))
        embedded = session.get_modelmeta().custom_metadata_map.get(CARD_ENTRY)
        return _graph_layer(path, onnx_graph(session)) + _embedded(path, embedded)
    if fmt == "torchscript":
        return _embedded(path, _torchscript(path)[1])
    if fmt == "torch.export":
        program, embedded = _exported(path)
        return _graph_layer(path, exported_graph(program)) + _embedded(path, embedded)
    return []


def _embedded(path: str, text: str | bytes | None) -> list[tuple[str, dict[str, Any]]]:
    """The embedded card's layer; one that cannot be read is left out with a warning, so a card
    given with the model (or ``gigaseg card embed``) can stand in for it."""
    if not text:
        return []
    try:
        return [(f"{path} ({CARD_ENTRY})", parse_card(text, f"the card embedded in {path}"))]
    except ModelError as e:
        warnings.warn(f"{e}; it is left out", GigasegWarning, stacklevel=4)
        return []


def _graph_layer(path: str, graph: Graph) -> list[tuple[str, dict[str, Any]]]:
    """Card keys the graph's fixed shapes state: channels, dimensions, a fixed tile side."""
    dims = graph.inputs
    if not dims or len(dims) < 4:
        return []
    keys: dict[str, Any] = {"spatial_dims": len(dims) - 2}
    if dims[1] is not None:
        keys["in_channels"] = dims[1]
    spatial = dims[2:]
    if all(d is not None for d in spatial) and len(set(spatial)) == 1:
        keys["input_size"] = spatial[0]
    return [(f"{path} {GRAPH_LAYER}", keys)]


def smp_card(config: dict[str, Any]) -> dict[str, Any]:
    """The card keys of an smp ``config.json``: architecture, encoder, channels, class count."""
    known = {"_model_class", "encoder_name", "in_channels", "classes", "encoder_weights"}
    kwargs = {k: v for k, v in config.items() if k not in known and not k.startswith("_")}
    count, channels = config.get("classes", 1), config.get("in_channels", 3)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (count, channels)):
        raise ModelError(f"config.json's classes and in_channels must be positive numbers, got {count!r}, {channels!r}")
    activation = kwargs.get("activation")
    kinds = {None: "logits", "identity": "logits", "sigmoid": "sigmoid", "softmax": "probabilities"}
    kinds["softmax2d"] = "probabilities"
    if activation not in kinds or (activation == "sigmoid" and count > 1):
        raise ModelError(
            f"config.json's activation {activation!r} with {count} classes is not one gigaseg blends: it takes raw "
            "scores, a softmax, or one sigmoid channel (multi-label sigmoids are not supported)"
        )
    outputs = kinds[activation]
    if count == 1 and outputs == "logits":
        outputs = "sigmoid"  # one raw channel: a binary mask
    classes = ["background", "foreground"] if outputs == "sigmoid" else [f"class{i}" for i in range(count)]
    return {
        "arch": str(config["_model_class"]).lower(),
        "encoder": config.get("encoder_name", "resnet34"),
        "in_channels": channels,
        "classes": classes,
        "arch_kwargs": kwargs,
        "outputs": outputs,
    }


def merge_layers(
    path: str, fmt: str, override: dict[str, Any] | None, *, embedded: bool = True, configuration: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The card's keys, merged from its layers, and where each came from."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    stated: dict[str, Any] = {}  # what the graph's fixed shape says: no card may say otherwise
    for where, keys in card_layers(path, fmt, override, embedded=embedded, configuration=configuration):
        for key, value in keys.items():
            if key in stated and value != stated[key]:
                raise ModelError(f"{where} says {key} {value!r}, but the graph of {path} takes {stated[key]!r}")
        if where.endswith(GRAPH_LAYER):
            stated = dict(keys)
        merged.update(keys)
        sources.update(dict.fromkeys(keys, where))
    return merged, sources


def missing_keys(merged: dict[str, Any]) -> list[str]:
    return [k for k in ("arch", "in_channels", "classes") if k not in merged]


def resolve_card(
    path: str,
    fmt: str,
    override: dict[str, Any] | None = None,
    *,
    embedded: bool = True,
    configuration: str | None = None,
) -> tuple[ModelCard, dict[str, str]]:
    """The card in force and, per key, where it came from (without the embedded card: what replaces it)."""
    merged, sources = merge_layers(path, fmt, override, embedded=embedded, configuration=configuration)
    if missing := missing_keys(merged):
        raise ModelError(
            f"{missing_line(path, missing)}; gigaseg models inspect shows what the graph takes", parameters=("card",)
        )
    if "input_size" in merged and "tile" not in merged:
        sources["tile"] = sources["overlap"] = f"input_size, from {sources['input_size']}"
    return ModelCard.from_dict(merged), sources


def missing_line(path: str, missing: list[str]) -> str:
    """What a card lacks, and where to give it."""
    beside = sidecar(path)
    where = f"with card (a JSON file) or in {beside} beside it" if beside else "with card"
    return f"{path} does not say its {', '.join(missing)}: give them {where}"


def card_override(card: ModelCard | dict[str, Any] | str | Path | None) -> dict[str, Any] | None:
    """A card argument as the keys it gives: a ModelCard, a dict of some keys, or a JSON file."""
    if card is None or isinstance(card, dict):
        return card
    if isinstance(card, ModelCard):  # the keys it sets: its defaults must not hide what a graph says
        defaults = ModelCard(arch=card.arch, in_channels=card.in_channels, classes=card.classes).to_dict()
        return {k: v for k, v in card.to_dict().items() if k in ("arch", "in_channels", "classes") or v != defaults[k]}
    if not isinstance(card, str | Path):
        raise InputError(f"card must be a ModelCard, a dict of card keys or a JSON file, not a {type(card).__name__}")
    return read_card_json(card)


# --------------------------------------------------------------------------- loading


def model_format(model: str | Path) -> str:
    """:func:`detect_format`, with torch files told apart: a gigaseg checkpoint or a state dict."""
    fmt = detect_format(model)
    return _torch_kind(str(model), fmt) if fmt in ("torch", "safetensors") else fmt


def open_model(
    model: str | Path, *, card: dict[str, Any] | None = None, embedded: bool = True, configuration: str | None = None
) -> LoadedModel:
    """The network at ``model`` (any format) with its card in force, on the CPU, in eval mode.

    ``embedded`` False leaves out the card the model carries (``gigaseg card embed`` replacing it).
    ``configuration``: which of an nnU-Net result folder's configurations (``3d_fullres`` unless said)."""
    path = str(model)
    with _loading_once():  # the card and the network come from one load of an archive
        fmt = model_format(path)
        resolved, sources = resolve_card(path, fmt, card, embedded=embedded, configuration=configuration)
        module, graph = _build(path, fmt, resolved)
    if isinstance(module, Ensemble) and resolved.merge == "logits" and resolved.outputs == "logits":
        module.average = "logits"  # the folds' logits averaged, as nnU-Net does
    elif isinstance(module, Ensemble) and resolved.outputs != "probabilities":  # the folds' mean probabilities
        resolved = dataclasses.replace(resolved, outputs="probabilities")
        sources["outputs"] = f"the mean of {len(module.members)} folds"
    return LoadedModel(path, fmt, module.eval(), resolved, sources, graph)


_ONCE = threading.local()


@contextlib.contextmanager
def _loading_once() -> Iterator[None]:
    """Within the block, an archive read for its card and again for its network is loaded once."""
    outer = getattr(_ONCE, "loaded", None) is not None
    if not outer:
        _ONCE.loaded = {}
    try:
        yield
    finally:
        if not outer:
            _ONCE.loaded = None


def _once(kind: str, path: str, load: Callable[[], Any]) -> Any:
    loaded = getattr(_ONCE, "loaded", None)
    if loaded is None:
        return load()
    if (kind, path) not in loaded:
        loaded[kind, path] = load()
    return loaded[kind, path]


def _torch_kind(path: str, fmt: str) -> str:
    if fmt == "safetensors":
        return "state_dict"
    data = _torch_file(path)
    return "gigaseg" if data.get("format") == CHECKPOINT else "state_dict"


FOLD_FORMATS = ("gigaseg", "state_dict", "smp", "nnunet")  # formats whose folds are weight files of one network


def _build(path: str, fmt: str, card: ModelCard) -> tuple[nn.Module, Graph]:
    if card.folds and fmt not in FOLD_FORMATS:
        raise ModelError(
            f"{path} is a {fmt} model: its card's folds name weight files of one network, which "
            f"{', '.join(FOLD_FORMATS)} models take; export one file per fold instead",
            parameters=("card",),
        )
    if fmt == "module":
        if path not in _MODULES:
            raise ModelError(f"{path} names a module of another process; pass the nn.Module itself")
        return _MODULES[path], Graph()
    if fmt == "monai_bundle":
        from gigaseg.models.bundle import bundle_module

        return bundle_module(path, card), Graph()
    if fmt == "nnunet":
        from gigaseg.models.nnunet import nnunet_module

        return nnunet_module(path, card), Graph()
    if fmt in ("gigaseg", "state_dict", "smp"):
        if card.folds:
            return folds_module(path, fmt, card), Graph()
        model = create_model(card)
        load_weights(model, _weights(path, fmt), path, card)
        return model, Graph()
    if fmt == "torchscript":
        return _torchscript(path)[0], Graph()
    if fmt == "torch.export":
        program = _exported(path)[0]
        graph = exported_graph(program)
        return Exported(program.module(), (graph.inputs or [None])[0]), graph
    session = onnx_session(path, device=torch.device("cpu"))
    graph = onnx_graph(session)
    names = [o.name for o in session.get_outputs()]
    if len(names) > 1:
        message = f"{path} has {len(names)} outputs; its first, {names[0]!r}, is taken as the scores"
        warnings.warn(message, GigasegWarning, stacklevel=3)
    outputs = 1 if card.outputs == "sigmoid" else card.num_classes
    return OnnxModule(path, outputs=outputs, batch=(graph.inputs or [None])[0]), graph


def folds_module(path: str, fmt: str, card: ModelCard) -> nn.Module:
    """The card's ``folds``: weight files of one network (relative to the model's folder), averaged as
    probabilities. ``path`` itself is the first fold only where the folds name it."""
    base = Path(path) if os.path.isdir(path) else Path(path).parent
    members = []
    for name in card.folds or []:
        file = base / name
        if not file.is_file():
            raise ModelError(f"fold {name} of {path} is missing: no file {file}", parameters=("card",))
        model = create_model(card)
        load_weights(model, _weights(str(file), "state_dict"), str(file), card)
        members.append(model)
    return Ensemble(members, outputs=card.outputs)


def _weights(path: str, fmt: str) -> dict[str, Any]:
    if fmt == "smp":
        path = str(Path(path) / "model.safetensors")
        if not os.path.isfile(path):
            raise ModelError(f"{Path(path).parent} has a config.json but no model.safetensors")
    with open(path, "rb") as f:
        head = f.read(16)
    if _is_safetensors(head):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors' own errors (SafetensorError) for damaged files
            raise ModelError(f"{path} is not a safetensors file torch can read: {e}") from None
    data = _torch_file(path)
    if data.get("format") == CHECKPOINT:
        return data["state_dict"]
    if {"state", "param_groups"} <= set(data):
        raise ModelError(f"{path} holds an optimizer's state, not a network's weights; {EXPORT_HINT}")
    return data.get("state_dict", data)


def _torch_file(path: str) -> dict[str, Any]:
    """A torch file loaded with ``weights_only`` (tensors and plain values, nothing else), once per version."""
    stat = os.stat(path)
    return _torch_file_version(str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _torch_file_version(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's unpickler fails on garbage in many ways (KeyError, ...)
        raise ModelError(unreadable(path, e)) from None
    if isinstance(data, dict):
        return data
    raise ModelError(f"{path} holds a {type(data).__name__}, not a checkpoint or state dict")


def _torchscript(path: str) -> tuple[nn.Module, str | bytes | None]:
    return _once("torchscript", path, lambda: _load_torchscript(path))


def _load_torchscript(path: str) -> tuple[nn.Module, str | bytes | None]:
    extra = {CARD_ENTRY: ""}
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; gigaseg still reads it
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as e:  # a damaged archive fails in many ways (RuntimeError, UnicodeDecodeError, ...)
        raise ModelError(_archive_error(path, "TorchScript", e)) from None
    return module, extra[CARD_ENTRY] or None


def _exported(path: str) -> tuple[Any, str | None]:
    return _once("torch.export", path, lambda: _load_exported(path))


def _load_exported(path: str) -> tuple[Any, str | None]:
    extra = {CARD_ENTRY: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as e:  # the deserialiser raises several kinds for files of other versions
        raise ModelError(_archive_error(path, "torch.export", e)) from None
    return program, extra[CARD_ENTRY] or None


def _archive_error(path: str, kind: str, error: Exception) -> str:
    text = str(error).strip().splitlines()
    first = text[0][:200] if text else type(error).__name__
    if "version" in first.lower() or "newer" in first.lower():
        return f"{path} is a {kind} file from a newer torch than this one ({torch.__version__}): {first}"
    return f"{path} is a {kind} file torch {torch.__version__} cannot load: {first}"


def exported_graph(program: Any) -> Graph:
    """The user input's shape of an exported program, with its dynamic dimensions as None."""
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name in names[:1]), None)
    value = None if node is None else node.meta.get("val")
    if value is None:
        return Graph()
    return Graph(inputs=[d if isinstance(d, int) else None for d in value.shape])


def onnx_graph(session: Any) -> Graph:
    def dims(shape: list[Any]) -> list[int | None]:
        return [d if isinstance(d, int) and d > 0 else None for d in shape]

    return Graph(inputs=dims(session.get_inputs()[0].shape), outputs=dims(session.get_outputs()[0].shape))


def inspect_model(
    model: str | Path, *, card: dict[str, Any] | None = None, configuration: str | None = None
) -> tuple[list[str], list[str]]:
    """What ``gigaseg models inspect`` prints, and the keys the card still lacks (then the card
    shows the keys found so far, and the graph where the file states it)."""
    path = str(model)
    with _loading_once():
        fmt = model_format(path)
        merged, sources = merge_layers(path, fmt, card, configuration=configuration)
        if missing := missing_keys(merged):
            graph = _graph_of(path, fmt)
            return _header(path, fmt, graph) + _keys(merged, sources) + [f"missing: {', '.join(missing)}"], missing
        return describe(open_model(path, card=card, configuration=configuration)), []


def _graph_of(path: str, fmt: str) -> Graph:
    if fmt == "onnx":
        return onnx_graph(onnx_session(path, device=torch.device("cpu")))
    return exported_graph(_exported(path)[0]) if fmt == "torch.export" else Graph()


def _header(path: str, fmt: str, graph: Graph) -> list[str]:
    return [f"model:   {path}", f"format:  {fmt}", f"sha256:  {model_sha256(path)}", f"graph:   {graph.line()}"]


def _keys(card: dict[str, Any], sources: dict[str, str]) -> list[str]:
    width = max((len(k) for k in card), default=1)
    lines = ["card:"]
    for key, value in card.items():
        where = sources.get(key, "default")
        if value in (None, {}, []) and where == "default":
            continue
        lines.append(f"  {key:<{width}}  {json.dumps(value)}  ({where})")
    return lines


def describe(loaded: LoadedModel) -> list[str]:
    """Format, identity, graph, and every card key in force with its source."""
    lines = _header(loaded.path, loaded.format, loaded.graph) + _keys(loaded.card.to_dict(), loaded.sources)
    lines.append(f"steps:   {json.dumps(loaded.card.steps())}")
    if loaded.card.band_names is None:
        lines.append("not said: band_names (the raster's bands are taken in their order, or as --bands says)")
    if not loaded.card.steps():
        lines.append("not said: normalize (pixels reach the network as they are in the file)")
    return lines

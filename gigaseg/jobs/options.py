"""The options of a segmentation run: declared once, read by the library, the CLI and job files."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from gigaseg.errors import InputError
from gigaseg.io.nifti import DEFAULT_CACHE_MAX
from gigaseg.jobs.memory import parse_bytes
from gigaseg.refine import RefineOptions
from gigaseg.tiler.grid import tiling_problem

Length = int | str  # pixels, or a string such as "3840m" in CRS units or "80mm"

# Largest block side and chunk side by scene dimensions when the options say None. A
# volume's stitcher holds (tile + chunk) slices of a block's plane for every class.
DEFAULT_BLOCK = {2: 16384, 3: 512}
DEFAULT_CHUNK = {2: 512, 3: 64}


@dataclass(frozen=True)
class Option:
    """How an option reaches its users besides Python: its help, CLI flag and place in a job file.

    ``section`` is the job file's mapping that holds it (``None``: the top
    level); ``cli``/``job`` say whether the CLI and job files reach it at all;
    ``parse`` turns the CLI's text into the value; ``minimum`` bounds numbers;
    ``check`` validates a value (raising :class:`InputError`); ``shown`` is the
    default the help shows when the field's default is ``None``.
    """

    help: str
    flag: str | None = None
    section: str | None = None
    cli: bool = True
    job: bool = True
    parse: Callable[[str], Any] | None = None
    minimum: int | None = None
    check: Callable[[Any], Any] | None = None
    shown: str | None = None


def option(default: Any, help: str, **how: Any) -> Any:
    """A dataclass field declared with its :class:`Option`."""
    return field(default=default, metadata={"option": Option(help, **how)})


def declared(cls: type) -> list[tuple[str, Any, Any, Option]]:
    """``(name, type, default, Option)`` of every declared field of dataclass ``cls``, in order."""
    hints = get_type_hints(cls)
    return [(f.name, hints[f.name], f.default, f.metadata["option"]) for f in fields(cls) if "option" in f.metadata]


def flag_of(cls: type, name: str) -> str:
    """The CLI flag of field ``name``."""
    how = next((o for n, _, _, o in declared(cls) if n == name), None)
    return (how.flag if how and how.flag else None) or "--" + name.replace("_", "-")


def parse_bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise InputError(f"bands must be comma-separated numbers, got {text!r}", parameters=("bands",)) from None


def parse_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise InputError(f"assets must be comma-separated asset names, got {text!r}", parameters=("assets",))
    return names


def parse_volume(text: str) -> int | str:
    if text == "channels":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"volume must be a number or 'channels', got {text!r}", parameters=("volume",)) from None


def parse_length_text(text: str) -> Length:
    """``"512"`` -> 512; lengths with units stay text for the planner."""
    return int(text) if text.strip().isdigit() else text


def check_size(value: int | str | None) -> None:
    parse_bytes(value)


@dataclass(frozen=True)
class SegmentOptions:
    """How to read, tile, blend and write; ``None`` means "from the model card" or "by the scene".

    Each field is declared once, here: its CLI flag (``gigaseg segment``) and its
    place in a job file (``gigaseg run``) are derived from this declaration.
    """

    tile: Length | None = option(
        None,
        "Tile side in pixels (512) or metres (5120m).",
        section="tiling",
        parse=parse_length_text,
        shown="the model card's",
    )
    overlap: Length | None = option(
        None,
        "Tile overlap in pixels (64) or metres (640m).",
        section="tiling",
        parse=parse_length_text,
        shown="the model card's",
    )
    blend: Literal["gaussian", "cosine", "constant", "nnunet"] | None = option(
        None,
        "Window that weights each tile's scores where tiles overlap.",
        section="tiling",
        shown="the model card's, else gaussian",
    )
    merge: Literal["probs", "logits"] | None = option(
        None, "Blend softmax probabilities or raw logits.", section="tiling", shown="the model card's, else probs"
    )
    bands: tuple[int, ...] | None = option(None, "Input bands to use, 1-based: 4,3,2.", parse=parse_bands)
    assets: tuple[str, ...] | None = option(
        None, "STAC: the assets to stack as bands, in order: B04,B03,B02.", parse=parse_names, shown="the model's bands"
    )
    block: int | None = option(
        None, "Largest output block side.", section="tiling", minimum=1, shown="16384; volumes 512"
    )
    chunk: int | None = option(None, "Output chunk side.", section="tiling", minimum=1, shown="512; volumes 64")
    batch_size: int | None = option(None, "Tiles per forward pass.", section="tiling", minimum=1, shown="by memory")
    device: str = option("auto", "auto, cpu or cuda[:N].")
    probabilities: Literal["float32", "float16", "uint8"] | None = option(
        None, "Also store per-class probabilities.", section="output"
    )
    zarr_format: Literal[2, 3] = option(2, "Zarr format; 2 is what GDAL 3.10 reads.", section="output")
    overwrite: bool = option(False, "Replace an existing output store.", section="output")
    resume: bool = option(False, "Finish an interrupted output store.", job=False)  # jobs: `gigaseg run --resume`
    progress: bool = option(False, "Show a progress bar on stderr.", cli=False, job=False)  # the CLI: when a terminal
    volume: int | str | None = option(
        None, "NIfTI 4-D: a volume number (0-based), or 'channels' for all.", parse=parse_volume
    )
    configuration: str | None = option(None, "nnU-Net result folders: the configuration to run.", shown="3d_fullres")
    slice_axis: int | None = option(None, "Run a 2-D model slice by slice along i=0, j=1, k=2.", minimum=0)
    context: int = option(0, "2.5-D: slices on each side as channels.", minimum=0)
    canonical: bool = option(False, "Show the model the volume reoriented to RAS.")
    cache_dir: str | None = option(
        None, "Where .nii.gz volumes are decompressed.", flag="--cache", shown="$GIGASEG_CACHE or the temp dir"
    )
    cache_max: int | str | None = option(
        None,
        "Bound of that cache (e.g. 20GiB); the least recently used copies go first.",
        check=check_size,
        shown="50GiB",
    )
    refine: RefineOptions | None = option(None, "Refine the labels (see gigaseg refine).")
    tta: bool = option(False, "Average the scores of all flips of each tile (4x the work in 2-D).")
    deterministic: bool = option(False, "CUDA: deterministic kernels, bit-identical GPU runs.")
    readers: int | None = option(
        None, "Reader threads.", section="tiling", minimum=1, shown="1 on CPU; up to 8 for a GPU"
    )
    band_memory: int | str | None = option(
        None,
        "Budget of the stitcher's band; blocks narrow to fit many classes.",
        section="tiling",
        check=check_size,
        shown="4GiB",
    )
    nodata_rule: Literal["all-bands", "any-band"] = option(
        "all-bands", "A pixel is nodata where all selected bands hold the nodata value (GDAL's mask), or any one."
    )

    def __post_init__(self) -> None:
        if self.refine is not None and self.probabilities is None:  # the refinement's unary, kept afterwards
            object.__setattr__(self, "probabilities", "uint8")


def check_options(options: SegmentOptions) -> None:
    """Refuse values that cannot be: counts below their minimum, bad sizes, negative lengths."""
    for name, kind, _, how in declared(SegmentOptions):
        value = getattr(options, name)
        if value is None:
            continue
        choices = literal_values(kind)
        if choices and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise InputError(f"{name} must be one of {allowed}, got {value!r}", parameters=(name,))
        if how.minimum is not None and (not isinstance(value, int) or isinstance(value, bool) or value < how.minimum):
            least = "1" if how.minimum == 1 else str(how.minimum)
            raise InputError(f"{name} must be a whole number of at least {least}, got {value!r}", parameters=(name,))
        if how.check is not None:
            try:
                how.check(value)
            except InputError as e:
                raise InputError(f"{name}: {e}", parameters=(name,)) from None
    bands = options.bands
    if bands is not None and (isinstance(bands, str) or not all(isinstance(b, int) and b >= 1 for b in bands)):
        raise InputError(f"bands must be band numbers from 1, such as (4, 3, 2), got {bands!r}", parameters=("bands",))
    for name in ("tile", "overlap"):
        value = getattr(options, name)
        if value is None:
            continue
        text = str(value).strip().lower()
        if not re.fullmatch(r"-?\d+|-?\d+(\.\d+)?(m|mm)", text):
            raise InputError(
                f"{name} must be pixels (512), CRS units (3840m) or millimetres (80mm), got {value!r}",
                parameters=(name,),
            )
        if float(text.removesuffix("mm").removesuffix("m")) < (1 if name == "tile" else 0):
            least = "1 pixel" if name == "tile" else "0"
            raise InputError(f"{name} must be at least {least}, got {value!r}", parameters=(name,))
    tile, overlap = options.tile, options.overlap
    if isinstance(tile, int) and isinstance(overlap, int) and (problem := tiling_problem(tile, overlap)):
        raise InputError(problem, parameters=("tile", "overlap"))


def literal_values(kind: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type (also inside ``... | None``); () for any other type."""
    if get_origin(kind) is Literal:
        return get_args(kind)
    return tuple(v for arg in get_args(kind) if get_origin(arg) is Literal for v in get_args(arg))


def cache_bytes(value: int | str | None) -> int:
    """The NIfTI cache's bound in bytes: ``"20GiB"``, a number of bytes, or ``None`` for 50 GiB."""
    try:
        return parse_bytes(value, default=DEFAULT_CACHE_MAX)
    except InputError:
        raise InputError(
            f"cache_max must be a positive size such as 20GiB or 500MB, got {value!r}", parameters=("cache_max",)
        ) from None

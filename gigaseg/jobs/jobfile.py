"""Job files: many scenes, one model, one set of settings, validated with pydantic.

Example::

    inputs: ["scenes/*.tif", "extra/scene_07.tif"]
    model: models/landcover.pt
    output: {dir: masks, name: "{stem}_mask.zarr"}
    tiling: {tile: 512, overlap: 64, blend: gaussian}
    cluster: {workers: 2, retries: 3}
"""

from __future__ import annotations

import glob
import os
import string
from pathlib import Path, PurePath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gigaseg.errors import InputError
from gigaseg.jobs.memory import parse_bytes
from gigaseg.jobs.segment import SceneSpec, SegmentOptions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tiling(Strict):
    tile: int | str | None = None
    overlap: int | str | None = None
    blend: Literal["gaussian", "cosine", "constant"] = "gaussian"
    merge: Literal["probs", "logits"] = "probs"
    block: int = Field(16384, gt=0)
    chunk: int = Field(512, gt=0)
    batch_size: int | None = Field(None, gt=0)
    readers: int | None = Field(None, gt=0, strict=True)
    band_memory: int | str | None = None

    @field_validator("band_memory")
    @classmethod
    def _memory_size(cls, value: int | str | None) -> int | str | None:
        parse_bytes(value)  # a bad size is named when the job file is read, not per scene
        return value


NAME_FIELDS = {"stem": "the input's file name without .tif, .tiff, .nii or .nii.gz"}


class Output(Strict):
    dir: Path = Path(".")
    name: str = "{stem}_mask.zarr"
    probabilities: Literal["float32", "float16", "uint8"] | None = None
    zarr_format: Literal[2, 3] = 2
    overwrite: bool = False

    @field_validator("name")
    @classmethod
    def _name_template(cls, value: str) -> str:
        check_output_name(value)  # named when the job file is read, so --dry-run reports it too
        return value


class Slurm(Strict):
    queue: str | None = None
    jobs: int = Field(1, gt=0)
    cores: int = Field(2, gt=0)
    memory: str = "8GB"
    walltime: str = "01:00:00"
    gpus_per_job: int = Field(0, ge=0)
    lifetime: str | None = None
    account: str | None = None
    log_directory: Path | None = None


class Cluster(Strict):
    scheduler: str | None = None
    workers: int | None = Field(None, gt=0)
    threads_per_worker: int | None = Field(None, gt=0)
    retries: int = Field(3, ge=0)
    slurm: Slurm | None = None


class Job(Strict):
    inputs: list[str] = Field(min_length=1)
    model: Path
    bands: list[int] | None = None
    nodata_rule: Literal["all-bands", "any-band"] = "all-bands"
    device: str = "auto"
    deterministic: bool = False
    tiling: Tiling = Tiling()
    output: Output = Output()
    cluster: Cluster = Cluster()

    def scenes(self, *, resume: bool = False, base: Path | None = None) -> list[SceneSpec]:
        """One spec per input file, in a stable order; each glob must match something."""
        base = base or Path(".")
        specs = []
        seen: dict[str, Path] = {}
        for path in expand_inputs(self.inputs, base):
            output = base / self.output.dir / render_name(self.output.name, stem=_stem(path))
            where = _inside(output, base / self.output.dir, self.output.name)
            if where in seen:
                raise InputError(
                    f"inputs {seen[where]} and {path} both map to output {output}; "
                    f"make output.name ({self.output.name!r}) tell them apart, e.g. with {{stem}}"
                )
            seen[where] = path
            specs.append(SceneSpec(str(path), str(base / self.model), str(output), self.options(resume)))
        return specs

    def absolute(self, base: Path) -> Job:
        """The same job with every path absolute, so it can be saved anywhere."""
        inputs = [p if Path(p).is_absolute() else str(base / p) for p in self.inputs]
        output = self.output.model_copy(update={"dir": (base / self.output.dir).absolute()})
        return self.model_copy(update={"inputs": inputs, "model": (base / self.model).absolute(), "output": output})

    def options(self, resume: bool) -> SegmentOptions:
        t, o = self.tiling, self.output
        return SegmentOptions(
            tile=t.tile,
            overlap=t.overlap,
            blend=t.blend,
            merge=t.merge,
            bands=tuple(self.bands) if self.bands else None,
            nodata_rule=self.nodata_rule,
            block=t.block,
            chunk=t.chunk,
            batch_size=t.batch_size,
            readers=t.readers,
            band_memory=t.band_memory,
            device=self.device,
            deterministic=self.deterministic,
            probabilities=o.probabilities,
            zarr_format=o.zarr_format,
            overwrite=o.overwrite and not resume,
            resume=resume,
        )


def check_output_name(name: str) -> None:
    """Refuse a name template other than one file name of literal text and plain NAME_FIELDS.

    Raises :class:`InputError` (a ``ValueError``: pydantic names the key): the template is parsed, never
    passed to ``str.format``, so ``{stem.__class__}`` or ``{stem[0]}`` cannot reach
    into objects, and ``{stem!r}`` or ``{stem:>9}`` are refused rather than guessed at.
    """
    allowed = ", ".join(f"{{{field}}} ({about})" for field, about in NAME_FIELDS.items())
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in _parse(name) if f is not None]
    except ValueError as e:
        raise InputError(f"{name!r} is not a name template ({e}); the only field allowed is {allowed}") from None
    for field, spec, conversion in fields:
        if field not in NAME_FIELDS or spec or conversion:
            written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise InputError(
                f"{name!r} uses {written}; the only field allowed is {allowed}, "
                "written plainly (no '.', '[]', '!' or ':')"
            )
    sample = render_name(name, stem="x")
    if PurePath(sample).name != sample or sample in ("", ".", ".."):
        raise InputError(f"{name!r} must be a file name inside output.dir, not a path (no '/' or '..')")


def render_name(name: str, **fields: str) -> str:
    """The output name for these field values; ``name`` passed :func:`check_output_name`."""
    return "".join(text + (fields[field] if field is not None else "") for text, field, _, _ in _parse(name))


def _parse(name: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return list(string.Formatter().parse(name))


def _inside(output: Path, directory: Path, name: str) -> str:
    """The resolved ``output``, refused unless it lies strictly inside ``directory``."""
    where, root = os.path.realpath(output), os.path.realpath(directory)
    if not where.startswith(root.rstrip(os.sep) + os.sep):
        raise InputError(f"output {output} (output.name {name!r}) is not inside output.dir {directory}")
    return where


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def expand_inputs(patterns: list[str], base: Path) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(base / pattern), recursive=True))
        if not matches:
            raise InputError(f"input pattern {pattern!r} matches no file")
        paths += [Path(m) for m in matches if Path(m) not in paths]
    return paths


def load_job(path: str | Path) -> Job:
    """Read and validate a YAML job file; errors name the offending key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"job file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise InputError(f"job file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"job file {path} must hold a mapping of settings, not {type(data).__name__}")
    try:
        return Job.model_validate(data)
    except ValidationError as e:
        raise InputError(f"job file {path}: {_first_error(e)}") from None


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"

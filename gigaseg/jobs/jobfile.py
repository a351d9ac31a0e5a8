"""Job files: many scenes, one model, one set of settings, validated with pydantic.

Example::

    inputs: ["scenes/*.tif", "extra/scene_07.tif"]
    model: models/landcover.pt
    output: {dir: masks, name: "{stem}_mask.zarr"}
    tiling: {tile: 512, overlap: 64, blend: gaussian}
    cluster: {kind: local, workers: 2, retries: 3}   # or kind: scheduler / slurm, see Cluster
"""

from __future__ import annotations

import glob
import os
import string
from dataclasses import dataclass, fields
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from gigaseg.errors import GigasegError, InputError, cli_message
from gigaseg.io.location import is_remote
from gigaseg.io.remote import is_local, url_name
from gigaseg.jobs.options import SegmentOptions, check_options, declared, flag_of
from gigaseg.jobs.outputs import output_format, staging_store
from gigaseg.jobs.scene import SceneSpec
from gigaseg.models.card import read_card_json
from gigaseg.refine import REFINERS, RefineOptions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def declared_keys(section: str | None) -> dict[str, Any]:
    """The job file's keys in ``section`` (``None``: the top level), derived from :class:`SegmentOptions`."""
    keys: dict[str, Any] = {}
    for name, kind, default, how in declared(SegmentOptions):
        if how.job and how.section == section and name != "refine":
            keys[name] = (kind, Field(default, description=how.help, ge=how.minimum))
    return keys


def job_key(name: str) -> str:
    """Where a job file holds option ``name``: ``tiling.tile``, ``bands``."""
    how = next((how for n, _, _, how in declared(SegmentOptions) if n == name), None)
    if how is not None and not how.job:
        return flag_of(SegmentOptions, name)  # `gigaseg run --resume`
    return f"{how.section}.{name}" if how and how.section else name


def job_message(error: BaseException) -> str:
    """The error's text with each parameter named by its job-file key, as the CLI names them by flag."""
    names = getattr(error, "parameters", ())
    return cli_message(error, {n: job_key(n) for n in names if n in SegmentOptions.__dataclass_fields__})


def refine_keys() -> dict[str, Any]:
    """The ``refine:`` mapping: :class:`RefineOptions` as a job file writes it (the method by name)."""
    hints = get_type_hints(RefineOptions)
    keys: dict[str, Any] = {"method": (Literal[tuple(sorted(REFINERS))], "crf")}  # type: ignore[misc]
    for f in fields(RefineOptions):
        if f.name not in keys and f.name not in ("resume", "progress"):
            keys[f.name] = (hints[f.name], f.default)
    return keys


Tiling = create_model("Tiling", __base__=Strict, **declared_keys("tiling"))
OutputOptions = create_model("OutputOptions", __base__=Strict, **declared_keys("output"))
JobOptions = create_model("JobOptions", __base__=Strict, **declared_keys(None))
Refine = create_model("Refine", __base__=Strict, **refine_keys())


NAME_FIELDS = {"stem": "the input's file name without .tif, .tiff, .nii or .nii.gz; a STAC item's id"}


class Output(OutputOptions):  # type: ignore[misc,valid-type]
    dir: str = "."  # a directory, or a prefix on object storage (s3://bucket/masks)
    name: str = "{stem}_mask.zarr"

    def where(self, base: Path) -> str:
        """The output directory: a URL as it is, a relative local path under ``base``."""
        return self.dir if is_remote(self.dir) or Path(self.dir).is_absolute() else str(base / self.dir)

    @field_validator("name")
    @classmethod
    def _name_template(cls, value: str) -> str:
        check_output_name(value)  # named when the job file is read, so --dry-run reports it too
        output_format(render_name(value, stem="x"))  # .zarr, .tif or .nii.gz
        return value


class Slurm(Strict):
    queue: str | None = None
    jobs: int = Field(default=1, gt=0)
    cores: int = Field(default=2, gt=0)
    memory: str = "8GB"
    walltime: str = "01:00:00"
    gpus_per_job: int = Field(default=0, ge=0)
    lifetime: str | None = None
    account: str | None = None
    log_directory: Path | None = None

    @field_validator("queue", "account", "walltime", "memory", "lifetime")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        """Each goes into the worker job's script as it is: a blank or a line break there would
        be a directive of its own (``debug\n#SBATCH --output=...``)."""
        if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
            raise ValueError(f"must be one word without blanks or control characters, got {value!r}")
        return value

    @field_validator("memory")
    @classmethod
    def _bytes(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            parse_bytes(value)
        except ValueError:
            raise ValueError(f"must be a size such as 8GB or 500MiB, got {value!r}") from None
        return value

    @field_validator("lifetime")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        from dask.utils import parse_timedelta

        try:
            parse_timedelta(value) if value is not None else None
        except (ValueError, KeyError):
            raise ValueError(f"must be a duration such as 50m or 2h, got {value!r}") from None
        return value


ClusterKind = Literal["local", "scheduler", "slurm"]

# The keys of ``cluster:`` that belong to one kind of cluster; ``retries`` belongs to every kind.
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "local": ("workers", "threads_per_worker"),
    "scheduler": ("scheduler",),
    "slurm": ("slurm",),
}


class Cluster(Strict):
    """Where the blocks run: ``kind`` says which cluster, never the presence of a key.

    ``local`` (the default): a Dask cluster on this machine, ``workers`` x ``threads_per_worker``;
    ``scheduler``: an existing Dask scheduler at ``scheduler``; ``slurm``: workers as SLURM
    jobs, set by the ``slurm`` block. A key of another kind is refused, not ignored.
    """

    kind: ClusterKind = "local"
    scheduler: str | None = None
    workers: int | None = Field(default=None, gt=0)
    threads_per_worker: int | None = Field(default=None, gt=0)
    retries: int = Field(default=3, ge=0)
    slurm: Slurm | None = None

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> Cluster:
        default = "" if "kind" in self.model_fields_set else " (the default)"
        for kind, keys in KIND_KEYS.items():
            given = [key for key in keys if kind != self.kind and getattr(self, key) is not None]
            if given:
                raise ValueError(
                    f"cluster.{given[0]} is for cluster.kind {kind}, but cluster.kind is {self.kind}{default}; "
                    f"set cluster.kind: {kind}, or drop cluster.{given[0]}"
                )
        if self.kind == "scheduler" and not self.scheduler:
            raise ValueError(
                "cluster.kind scheduler needs cluster.scheduler, the address of a running Dask scheduler "
                "(tcp://host:8786)"
            )
        return self


class StacInputs(Strict):
    """``inputs: {stac: items.json, assets: [B02, B03, B04, B08]}``: one scene per item of a STAC
    Item, ItemCollection or static catalog (:mod:`gigaseg.io.stac`), its assets stacked as bands."""

    stac: str
    assets: list[str] | None = Field(default=None, min_length=1)


class Job(JobOptions):  # type: ignore[misc,valid-type]
    """A job file: inputs, a model, and the options of :class:`SegmentOptions` (derived from their declaration)."""

    inputs: Annotated[list[str], Field(min_length=1)] | StacInputs
    model: Path  # any format gigaseg reads: a checkpoint, TorchScript, .pt2, ONNX, an smp folder
    card: Path | dict[str, Any] | None = None  # a model card JSON file, or its keys: over the model's own
    tiling: Tiling = Tiling()  # type: ignore[valid-type]
    output: Output = Output()
    refine: Refine | None = None  # type: ignore[valid-type]
    cluster: Cluster = Cluster()

    @model_validator(mode="after")
    def _options(self) -> Job:
        stac_assets = self.inputs.assets if isinstance(self.inputs, StacInputs) else None
        top = getattr(self, "assets", None)  # declared in SegmentOptions
        if stac_assets and top and tuple(stac_assets) != tuple(top):
            raise ValueError("assets is given twice, in inputs and at the top level; keep one")
        try:
            check_options(self.options(resume=False))  # bad sizes are named when the file is read
        except InputError as e:  # named by their keys here, as the CLI names them by flags
            raise ValueError(job_message(e)) from None
        return self

    def scenes(self, *, resume: bool = False, base: Path | None = None) -> list[SceneSpec]:
        """One spec per input file, in a stable order; inputs that name no file: :meth:`missing_inputs`."""
        base = base or Path(".")
        specs = []
        seen: dict[str, Path | str] = {}
        card = read_card_json(base / self.card) if isinstance(self.card, Path) else self.card
        for path, stem in self._inputs(base):
            directory = self.output.where(base)
            output = join(directory, render_name(self.output.name, stem=stem))
            where = output if is_remote(directory) else _inside(Path(output), Path(directory), self.output.name)
            if where in seen:
                hint = (
                    "they have the same stem: put them in separate jobs, or rename one"
                    if "{stem}" in self.output.name
                    else f"make output.name ({self.output.name!r}) tell them apart, e.g. with {{stem}}"
                )
                raise InputError(f"inputs {seen[where]} and {path} both map to output {output}; {hint}")
            seen[where] = path
            final = str(output)  # a store, or a file exported from its staging store (gigaseg.jobs.outputs)
            store, export = (final, None) if output_format(final) == "zarr" else (staging_store(final), final)
            model, options = str(base / self.model), self.options(resume)
            specs.append(SceneSpec(str(path), model, store, options, card=card, export=export))
        return specs

    def _inputs(self, base: Path) -> list[tuple[Path | str, str]]:
        """``(input, stem)`` per scene: the files ``inputs`` names, or ``items.json#<item id>`` per STAC item."""
        if isinstance(self.inputs, StacInputs):
            from gigaseg.io.location import is_remote
            from gigaseg.io.stac import stac_scene_inputs

            stac = self.inputs.stac if is_remote(self.inputs.stac) else str(base / self.inputs.stac)
            try:
                return list(stac_scene_inputs(stac))
            except GigasegError:
                return []  # missing_inputs names it; its scene fails alone
        return [(path, _stem(path)) for path in expand_inputs(self.inputs, base)]

    def missing_inputs(self, base: Path | None = None) -> list[MissingInput]:
        """The entries of ``inputs`` that name no file (a missing path, a glob matching nothing)."""
        missing: list[MissingInput] = []
        if isinstance(self.inputs, StacInputs):
            return self._missing_stac(base or Path("."))
        expand_inputs(self.inputs, base or Path("."), missing)
        return missing

    def _missing_stac(self, base: Path) -> list[MissingInput]:
        """The STAC file of ``inputs: {stac: ...}`` when it cannot be read or holds no item."""
        from gigaseg.io.location import is_remote
        from gigaseg.io.stac import item_ids

        assert isinstance(self.inputs, StacInputs)
        stac = self.inputs.stac if is_remote(self.inputs.stac) else str(base / self.inputs.stac)
        try:
            item_ids(stac)
        except GigasegError as e:
            return [MissingInput(stac, str(e))]
        return []

    def absolute(self, base: Path) -> Job:
        """The same job with every path absolute, so it can be saved anywhere."""
        inputs: list[str] | StacInputs
        if isinstance(self.inputs, StacInputs):
            stac = self.inputs.stac
            absolute = "://" in stac or Path(stac).is_absolute()
            inputs = self.inputs if absolute else self.inputs.model_copy(update={"stac": str(base / stac)})
        else:
            inputs = [p if not is_local(p) or Path(p).is_absolute() else str(base / p) for p in self.inputs]
        directory = self.output.where(base)
        output = self.output.model_copy(
            update={"dir": directory if is_remote(directory) else str(Path(directory).absolute())}
        )
        card = (base / self.card).absolute() if isinstance(self.card, Path) else self.card
        update = {"inputs": inputs, "model": (base / self.model).absolute(), "card": card, "output": output}
        return self.model_copy(update=update)

    def options(self, resume: bool) -> SegmentOptions:
        """The options of every scene, gathered from the sections their declaration names."""
        values: dict[str, Any] = {}
        for name, _, _, how in declared(SegmentOptions):
            if how.job and name != "refine":
                values[name] = getattr(self if how.section is None else getattr(self, how.section), name)
        values["overwrite"] = values["overwrite"] and not resume
        if isinstance(self.inputs, StacInputs) and self.inputs.assets:
            values["assets"] = tuple(self.inputs.assets)
        refine = RefineOptions(**self.refine.model_dump()) if self.refine else None
        return SegmentOptions(**values, refine=refine, resume=resume)


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


def join(directory: str, name: str) -> str:
    """``name`` inside ``directory``, a local path or a URL prefix."""
    return f"{directory.rstrip('/')}/{name}" if is_remote(directory) else str(Path(directory) / name)


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


def _stem(path: Path | str) -> str:
    """The file name without .tif, .tiff, .nii or .nii.gz (a URL's: of the last element of its path)."""
    name = Path(path).name if is_local(path) else url_name(path)
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass(frozen=True)
class MissingInput:
    """An entry of ``inputs`` that names no file: its scene fails alone, the others run."""

    input: str  # the path or glob, joined to the job file's directory
    error: str


def expand_inputs(patterns: list[str], base: Path, missing: list[MissingInput] | None = None) -> list[Path | str]:
    """The files ``patterns`` name, each once, in order.

    A local path that does not exist, or a glob that matches nothing, goes to
    ``missing``. A URL (``https://``, ``s3://``), a ``/vsi`` path or another GDAL
    name is an input as it is written: never globbed, joined or checked here
    (GDAL says whether it opens, when its scene is planned).
    """
    paths: list[Path | str] = []
    for pattern in patterns:
        if not is_local(pattern):
            if pattern not in paths:
                paths.append(pattern)
            continue
        where = base / pattern
        matches = [str(where)] if where.exists() else sorted(glob.glob(str(where), recursive=True))
        if not matches and missing is not None:
            is_glob = glob.has_magic(pattern)
            error = f"input pattern {pattern!r} matches no file" if is_glob else f"input {pattern} does not exist"
            missing.append(MissingInput(str(where), error))
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
    """The first error, its key as the job file writes it; a value no member of a union
    (``tile: int | str``) takes is one error that says what each would have taken."""
    errors = error.errors()
    first, where = errors[0], _key(errors[0]["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    same = [e for e in errors if _key(e["loc"]) == where]
    message = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same))
    if len(same) > 1:
        message = f"{message}; got {first['input']!r}"
    left = len(errors) - len(same)
    more = f" (and {left} more)" if left else ""
    named = where and not message.startswith(f"{where}.")  # "cluster.slurm is ...": no "cluster: " before it
    return f"{where}: {message}{more}" if named else f"{message}{more}"


def _key(loc: tuple[int | str, ...]) -> str:
    """``tiling.tile`` from pydantic's ``("tiling", "tile", "int")``: without the union member tried."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p in _MEMBER_TAGS or "[" in p)))


_MEMBER_TAGS = {"int", "str", "float", "bool", "list", "dict", "tuple", "none", "literal"}

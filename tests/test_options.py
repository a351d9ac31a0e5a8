"""Every option is declared once (SegmentOptions) and reaches the CLI and job files from there."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gigaseg import InputError, SegmentOptions
from gigaseg.jobs.jobfile import Job, load_job
from gigaseg.jobs.options import check_options, declared, flag_of

# Fields a user does not set: the CLI shows progress when stderr is a terminal.
NOT_FROM_CLI = {"progress"}
# Job files resume with `gigaseg run --resume`, not a key.
NOT_FROM_JOBS = {"progress", "resume"}


def test_every_field_is_declared() -> None:
    names = {f.name for f in dataclasses.fields(SegmentOptions)}
    assert names == {name for name, *_ in declared(SegmentOptions)}


def test_every_field_reaches_the_cli_or_is_excluded() -> None:
    from gigaseg.jobs.cli import cli

    flags = {opt for p in cli.commands["segment"].params for opt in p.opts}
    for name, _, _, how in declared(SegmentOptions):
        assert how.cli == (name not in NOT_FROM_CLI), name
        if how.cli:
            assert flag_of(SegmentOptions, name) in flags, name


def test_every_field_reaches_job_files_or_is_excluded() -> None:
    job = Job.model_validate({"inputs": ["a.tif"], "model": "m.pt"})
    for name, _, default, how in declared(SegmentOptions):
        assert how.job == (name not in NOT_FROM_JOBS), name
        if how.job:
            holder = job if how.section is None else getattr(job, how.section)
            assert getattr(holder, name) == default, name


def test_a_job_file_reaches_volume_refine_and_tta_options() -> None:
    job = Job.model_validate(
        {
            "inputs": ["a.nii.gz"],
            "model": "m.pt",
            "volume": 1,
            "slice_axis": 2,
            "context": 1,
            "canonical": True,
            "tta": True,
            "cache_dir": "/tmp/cache",
            "refine": {"method": "superpixel", "params": {"size": 12}},
            "tiling": {"tile": "80mm"},
        }
    )
    options = job.options(resume=True)
    assert (options.volume, options.slice_axis, options.context, options.canonical) == (1, 2, 1, True)
    assert options.tta and options.resume and options.cache_dir == "/tmp/cache"
    assert options.refine is not None and options.refine.method == "superpixel"
    assert options.refine.params == {"size": 12}
    assert options.probabilities == "uint8"  # refinement keeps its unary
    assert options.tile == "80mm"


def test_job_files_leave_block_and_chunk_to_the_scene() -> None:
    """Volumes get 512/64 blocks/chunks and rasters 16384/512: the job must not pin the raster's."""
    options = Job.model_validate({"inputs": ["a.tif"], "model": "m.pt"}).options(resume=False)
    assert options.block is None and options.chunk is None


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("tiling", "band_memory", "lots", "band_memory"),
        ("tiling", "chunk", 0, "chunk"),
        (None, "context", -1, "context"),
        (None, "cache_max", "-3GB", "cache_max"),
        (None, "refine", {"method": "nope"}, "refine.method"),
    ],
)
def test_job_files_name_the_bad_key(tmp_path: Path, section: str | None, key: str, value: object, named: str) -> None:
    data: dict[str, object] = {"inputs": ["a.tif"], "model": "m.pt"}
    data.update({section: {key: value}} if section else {key: value})
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=named):
        load_job(path)


def test_check_options_names_the_parameter() -> None:
    with pytest.raises(InputError, match=r"^batch_size must be a whole number of at least 1") as caught:
        check_options(SegmentOptions(batch_size=0))
    assert caught.value.parameters == ("batch_size",)
    with pytest.raises(InputError, match="band_memory"):
        check_options(SegmentOptions(band_memory="a lot"))


def test_the_readme_documents_every_flag() -> None:
    """The README's option table is written by hand: every declared flag must be in it."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("`gigaseg segment` options") :].split("\n\n")[1]
    for name, _, _, how in declared(SegmentOptions):
        if how.cli:
            assert f"`{flag_of(SegmentOptions, name)}`" in table, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zarr-format", "4"], "--zarr-format must be one of 2, 3, got '4'"),
        (["--blend", "box"], "--blend must be one of 'gaussian', 'cosine', 'constant', 'nnunet', got 'box'"),
        (["--block", "abc"], "--block must be a whole number, got 'abc'"),
        (["--tile", "abc"], "--tile must be pixels (512), CRS units (3840m) or millimetres (80mm), got 'abc'"),
        (["--tile", "16", "--overlap", "9"], "--tile must be at least twice --overlap"),
    ],
)
def test_bad_flag_values_are_one_line_naming_the_flag(tmp_path, args, message):
    from tests.conftest import one_error, run

    result = run("segment", tmp_path / "in.tif", "--model", tmp_path / "m.pt", "--out", tmp_path / "o.zarr", *args)
    one_error(result, message)
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    ("values", "named"),
    [({"zarr_format": 4}, "zarr_format"), ({"bands": "1,2"}, "bands"), ({"probabilities": "x"}, "probabilities")],
)
def test_bad_python_values_are_input_errors_naming_the_keyword(values, named):
    with pytest.raises(InputError, match=f"^{named} must be") as caught:
        check_options(SegmentOptions(**values))
    assert caught.value.parameters == (named,)

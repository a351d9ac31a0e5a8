"""What an output names: a Zarr store, or a file exported from one (a COG, a NIfTI volume).

A file output is segmented block by block into a hidden staging store beside
it (``.mask.tif.zarr`` for ``mask.tif``), exported from there, and the staging
store removed: memory stays bounded by the block, and an interrupted run
leaves the staging store for ``resume`` to finish.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from gigaseg.errors import InputError, OutputExistsError
from gigaseg.io.location import location
from gigaseg.io.nifti import is_nifti
from gigaseg.jobs.options import SegmentOptions

# format -> the suffixes that name it; a name without a suffix is a Zarr store (a directory)
FORMATS = {"zarr": (".zarr",), "cog": (".tif", ".tiff"), "nifti": (".nii", ".nii.gz")}


def output_format(output: str) -> str:
    """``"zarr"``, ``"cog"`` or ``"nifti"``, by the name's suffix (none: a Zarr store)."""
    name = PurePosixPath(str(output).rstrip("/")).name.lower()
    for kind, suffixes in FORMATS.items():
        if name.endswith(suffixes):
            return kind
    if "." not in name.lstrip("."):
        return "zarr"
    accepted = ", ".join(f"{' or '.join(s)} ({kind})" for kind, s in FORMATS.items())
    raise InputError(f"cannot tell what to write to {output}: its name must end in {accepted}")


def staging_store(output: str) -> str:
    """The Zarr store a file output is segmented into before it is exported."""
    parent, _, name = str(output).rstrip("/").rpartition("/")  # a path or a URL: keep its "s3://"
    return f"{parent}/.{name}.zarr" if parent else f".{name}.zarr"


def check_file_output(output: str, options: SegmentOptions, input_path: str) -> bool:
    """Refuse what cannot be written before anything is; True when ``resume`` finds ``output`` written.

    A NIfTI output copies its input's header, so it needs a NIfTI input. An
    existing output is refused unless ``overwrite``; with ``resume`` an
    interrupted run goes on from its staging store, and a finished one is done.
    """
    if output_format(output) == "nifti" and not is_nifti(input_path):
        raise InputError(
            f"output {output} is NIfTI, which copies the input's header, but {input_path} is not a NIfTI volume; "
            "write a .tif or .zarr",
            parameters=("output",),
        )
    fs, path = location(output)
    if not fs.exists(path) or options.overwrite:
        return False
    if options.resume:
        return not fs.exists(location(staging_store(output))[1])
    raise OutputExistsError(f"output {output} exists; pass overwrite to replace it", parameters=("overwrite",))

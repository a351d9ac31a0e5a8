"""``gigaseg segment``: one scene in, one mask out (a Zarr store, a COG or a NIfTI file)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gigaseg.jobs.cli.declared import declared_options
from gigaseg.jobs.cli.options import METHODS, refine_from, refine_options
from gigaseg.jobs.options import SegmentOptions


@click.command("segment")
@click.argument("input_path", metavar="INPUT", type=click.Path())  # a str: s3:// and https:// URLs too
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The model: a checkpoint, a state dict with --card, TorchScript, torch.export (.pt2), ONNX, or an smp folder.",
)
@click.option(
    "--out",
    "output",
    required=True,
    type=click.Path(),
    help="Output: a Zarr store (x.zarr, s3://bucket/x.zarr), a COG (x.tif) or NIfTI (x.nii.gz).",
)
@declared_options(SegmentOptions, skip=("refine",))
@click.option("--refine", "refine_method", type=METHODS, default=None, help="Refine the labels (see gigaseg refine).")
@refine_options
@click.option("--dry-run", is_flag=True, help="Print the plan and the memory it will take; run nothing.")
@click.option(
    "--card",
    "card_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Model card (JSON): keys over the model's own card (all of them for a plain state dict).",
)
def segment(
    input_path: str,
    model_path: Path,
    output: str,
    refine_method: str | None,
    card_path: Path | None,
    dry_run: bool,
    **kw: Any,
) -> None:
    """Segment INPUT (a GeoTIFF or any GDAL raster, or a NIfTI volume) into a Zarr mask."""
    from gigaseg.jobs.segment import segment as run
    from gigaseg.models.card import read_card_json

    if kw["overwrite"] and kw["resume"]:
        raise click.BadParameter("--overwrite and --resume exclude each other")
    card = read_card_json(card_path) if card_path else None
    options = SegmentOptions(refine=refine_from(refine_method, kw), progress=sys.stderr.isatty(), **kw)
    if dry_run:
        from gigaseg.jobs.preflight import describe_scene
        from gigaseg.jobs.scene import SceneSpec

        spec = SceneSpec(str(input_path), str(model_path), str(output), options, card)
        click.echo(describe_scene(spec))
        return
    summary = run(input_path, model_path, output, options, card=card)
    click.echo(summary.line())

"""``gigaseg train``: train a model on labelled rasters or volumes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gigaseg.jobs.cli.options import parse_bands, parse_json_object, parse_numbers


@click.command("train")
@click.option(
    "--image", "images", multiple=True, required=True, type=click.Path(), help="A raster or volume: a path or URL."
)
@click.option(
    "--labels",
    multiple=True,
    required=True,
    type=click.Path(),  # str: https:// and s3:// URLs too
    help="One per --image: a raster of class indices, or vectors (.gpkg, .geojson, .shp).",
)
@click.option("--val-image", "val_images", multiple=True, type=click.Path())
@click.option("--val-labels", multiple=True, type=click.Path())
@click.option("--out", "output", required=True, type=click.Path(path_type=Path), help="Best checkpoint (.pt).")
@click.option(
    "--classes",
    required=True,
    help="Comma-separated class names (label value --label-offset first), or a number of classes.",
)
@click.option("--colors", default=None, help="Comma-separated colours, one per class.")
@click.option("--arch", default="unet", show_default=True, help="See `gigaseg models`.")
@click.option("--encoder", default=None, help="smp encoder of 2-D archs (default resnet18).")
@click.option("--arch-kwargs", default="{}", help="JSON, e.g. '{\"encoder_depth\": 3}'.")
@click.option("--bands", default=None, help="Input bands to use, 1-based: 4,3,2.")
@click.option("--tile", type=int, default=256, show_default=True)
@click.option("--overlap", type=int, default=None, help="Recommended in the card [tile / 8].")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True, help="Batches per epoch.")
@click.option(
    "--val-fraction", type=float, default=0.2, show_default=True, help="Share of the labelled pixels held out."
)
@click.option("--val-tiles", type=int, default=16, show_default=True, help="Validation blocks scored per epoch.")
@click.option("--val-block", type=int, default=None, help="Side of the split's blocks, px [min(tile, side/4)].")
@click.option(
    "--sampling",
    type=click.Choice(["auto", "uniform", "labelled", "balanced"]),
    default="auto",
    show_default=True,
    help="Training tiles: random, around labelled pixels, or balanced over classes (auto: by labelled share).",
)
@click.option("--class-weights", default=None, help="Cross-entropy class weights: balanced, or one number per class.")
@click.option("--label-offset", type=int, default=0, show_default=True, help="1 for labels 1..N (0 = unlabelled).")
@click.option("--ignore-index", type=int, default=None, help="Label value of unlabelled pixels, besides nodata.")
@click.option(
    "--label-attribute", default=None, help="Class attribute of vector labels (.gpkg, .geojson, .shp) [class/label]."
)
@click.option(
    "--encoder-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Local encoder state dict (timm/smp, .pt or .safetensors); never downloaded.",
)
@click.option("--clip", default=None, help="Intensity window low,high applied before mean/std (CT: -150,250).")
@click.option(
    "--candidates",
    type=int,
    default=1,
    show_default=True,
    help="Tiles drawn per sample; the one richest in rare classes is kept (small structures).",
)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--half", is_flag=True, help="Store the weights as float16.")
@click.option("--resume", is_flag=True, help="Continue from <out>.last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
def train(output: Path, images: tuple[str, ...], labels: tuple[str, ...], **kw: Any) -> None:
    """Train on (image, labels) rasters or volumes of any size, sampling random tiles."""
    from gigaseg.jobs.train import run_train, validation_table
    from gigaseg.models.training import TrainConfig

    classes, colors = kw.pop("classes"), kw.pop("colors")
    run = {k: kw.pop(k) for k in ("val_images", "val_labels", "resume", "overwrite")}
    bands = parse_bands(kw.pop("bands"))
    clip, weights = kw.pop("clip"), kw.pop("class_weights")
    if weights and weights != "balanced":
        weights = parse_numbers(weights, "class weights", count=len(weights.split(",")))
    config = TrainConfig(
        clip=parse_numbers(clip, "clip", count=2) if clip else None,
        class_weights=weights,
        classes=[f"class{i}" for i in range(int(classes))] if classes.isdigit() else classes.split(","),
        colors=colors.split(",") if colors else None,
        arch_kwargs=parse_json_object(kw.pop("arch_kwargs")),
        **kw,
    )
    progress = sys.stderr.isatty()
    chosen = list(bands) if bands else None
    result = run_train(list(images), list(labels), output, config, bands=chosen, progress=progress, **run)
    metrics = result.card.metrics
    table = validation_table(result.card)
    if table:
        click.echo(table)
    click.echo(
        f"{output}: best epoch {metrics['epoch']}, val dice {metrics['val_mean_dice']:.3f}, "
        f"receptive field {result.card.receptive_field} px"
    )

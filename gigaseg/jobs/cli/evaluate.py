"""``gigaseg evaluate``: score a finished mask against reference labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("evaluate")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    "reference",
    required=True,
    type=click.Path(),  # str: a raster may be a URL
    help="Reference: a raster of class labels, or points/polygons (.gpkg, .geojson, .shp, ...).",
)
@click.option(
    "--label-offset", type=int, default=0, show_default=True, help="Reference value v is class v - N (1-based: 1)."
)
@click.option("--ignore-value", default=None, help="A reference value (or class name) to leave out, besides nodata.")
@click.option("--attribute", default=None, help="Class column of vector labels [the one named class or label].")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Also draw the confusion matrix (PNG).")
def evaluate(store_path: Path, reference: str, as_json: bool, plot: Path | None, **kw: Any) -> None:
    """Score a finished mask against reference labels: per-class precision, recall, F1, IoU; accuracy, kappa."""
    from gigaseg.jobs.evaluate import evaluate_store, plot_confusion

    result = evaluate_store(store_path, reference, **kw)
    if plot is not None:
        plot_confusion(result, plot)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())

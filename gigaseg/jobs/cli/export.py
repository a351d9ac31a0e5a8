"""``gigaseg export``: a mask store to a Cloud-Optimized GeoTIFF or NIfTI."""

from __future__ import annotations

import sys

import click


@click.command("export")
@click.argument("store_path", metavar="STORE", type=click.Path())  # str: a directory or an s3:// URL
@click.argument("output", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--allow-incomplete", is_flag=True, help="Export a store whose run never finished.")
def export(store_path: str, output: str, overwrite: bool, allow_incomplete: bool) -> None:
    """Export a mask store to a Cloud-Optimized GeoTIFF (.tif), or a volume's to NIfTI (.nii.gz)."""
    from gigaseg.io.export import export_mask

    export_mask(
        store_path, output, overwrite=overwrite, allow_incomplete=allow_incomplete, progress=sys.stderr.isatty()
    )
    click.echo(f"{output}: written")

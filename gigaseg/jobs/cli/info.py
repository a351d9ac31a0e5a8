"""``gigaseg info``: describe a mask store."""

from __future__ import annotations

import json

import click


@click.command("info")
@click.argument("store_path", metavar="STORE", type=click.Path())  # str: a directory or an s3:// URL
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.option("--verify", is_flag=True, help="Also check every chunk against its checksum (as gigaseg verify).")
def info(store_path: str, as_json: bool, verify: bool) -> None:
    """Describe a mask store: shape, classes, georeferencing, progress."""
    from gigaseg.io.inspect import describe_store
    from gigaseg.io.store import verify_store

    record = describe_store(store_path)
    if verify:
        found = verify_store(store_path)
        record["verified"] = f"{found.checked} chunks match their checksums"
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for key, value in record.items():
        if key == "affine":  # a volume's 4x4: one row a line, as nibabel prints it
            click.echo("affine:")
            for row in value:
                click.echo("  [" + "  ".join(f"{v:10.6g}" for v in row) + "]")
        elif key == "voxel_sizes_mm":
            click.echo(f"voxel_sizes_mm: {' x '.join(f'{v:.6g}' for v in value)}")
        elif key != "provenance":
            click.echo(f"{key}: {value}")
    if not record["complete"]:
        click.echo(f"gigaseg: warning: {store_path} is INCOMPLETE", err=True)

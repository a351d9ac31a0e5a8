"""``gigaseg demo``: a generated scene segmented with the bundled model."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--out",
    "output",
    type=click.Path(path_type=Path),
    default=Path("gigaseg-demo"),
    show_default=True,
    help="Directory for the scene, the model and the mask.",
)
@click.option("--size", type=int, default=2048, show_default=True, help="Scene side in pixels.")
@click.option("--device", default="auto", show_default=True)
def demo(output: Path, size: int, device: str) -> None:
    """Generate a georeferenced scene and segment it with the bundled model."""
    from gigaseg.jobs.demo import run_demo

    summary = run_demo(output, size=size, device=device, progress=sys.stderr.isatty())
    click.echo(summary.line())
    click.echo(f"mask: {summary.output}  (try: gigaseg info {summary.output})")

"""``gigaseg refine``: refine a store's labels with a CRF or superpixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gigaseg.jobs.cli.options import METHODS, refine_from, refine_options


@click.command("refine")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--image", required=True, type=click.Path(), help="The image the store was made from (a path or URL).")
@click.option("--method", type=METHODS, default="crf", show_default=True)
@click.option("--resume", is_flag=True, help="Keep the blocks an interrupted refinement finished.")
@refine_options
def refine(store_path: Path, image: str, method: str, resume: bool, **kw: Any) -> None:
    """Refine the labels of STORE (which has probabilities) with a CRF or superpixels."""
    from dataclasses import replace

    from gigaseg.jobs.refine import refine as run

    options = refine_from(method, kw)
    assert options is not None  # --method always names one
    options = replace(options, resume=resume)
    store, counts, seconds = run(store_path, image, options)
    pixels = int(counts.sum())
    names = ", ".join(f"{n} {int(c)}" for n, c in zip(store.classes, counts[:-1], strict=True))
    click.echo(
        f"{store_path}: refined {pixels} px with {method} in {seconds:.1f} s "
        f"({pixels / 1e6 / max(seconds, 1e-9):.2f} Mpix/s); {names}; nodata {int(counts[-1])}"
    )

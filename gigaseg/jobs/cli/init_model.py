"""``gigaseg init-model``: a seeded, untrained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("init-model")
@click.option("--arch", default="unet", show_default=True)
@click.option("--encoder", default=None, help="Encoder of smp architectures [default: resnet18].")
@click.option("--in-channels", type=int, default=3, show_default=True)
@click.option("--classes", default="4", show_default=True, help="A number of classes, or comma-separated class names.")
@click.option("--tile", type=int, default=512, show_default=True)
@click.option("--overlap", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "output", required=True, type=click.Path(path_type=Path))
def init_model(output: Path, **kw: Any) -> None:
    """Write a seeded, untrained checkpoint (for tests and benchmarks)."""
    from gigaseg.models.checkpoint import init_checkpoint

    classes = kw.pop("classes")
    names = [f"class{i}" for i in range(int(classes))] if classes.isdigit() else classes.split(",")
    card = init_checkpoint(output, classes=names, **kw)
    encoder = f" ({card.encoder})" if card.encoder else ""
    bands, classes = _count(card.in_channels, "band"), _count(card.num_classes, "class")
    click.echo(f"{output}: untrained {card.arch}{encoder}, {bands}, {classes}")


def _count(n: int, noun: str) -> str:
    """``1 band``, ``3 bands``, ``1 class``, ``4 classes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"

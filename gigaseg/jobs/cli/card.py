"""``gigaseg card embed``: write a card into a model file, so the model carries what it needs."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("card")
def card_command() -> None:
    """Model cards: what a network takes and gives (see gigaseg models inspect)."""


@card_command.command("embed")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("card", type=click.Path(path_type=Path))
@click.option("--out", "output", required=True, type=click.Path(path_type=Path), help="The model file to write.")
def embed_command(model: Path, card: Path, output: Path) -> None:
    """Write MODEL with CARD (JSON) in it to --out: TorchScript and .pt2 extra files, ONNX metadata, checkpoints."""
    from gigaseg.models.embed import embed_card

    embed_card(model, card, output)
    click.echo(f"{output}: card embedded")

"""``gigaseg models``: the architectures and their sizes; ``gigaseg models inspect``: one model's card."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("models", invoke_without_command=True)
@click.pass_context
def models_command(ctx: click.Context) -> None:
    """List the architectures, with parameter counts for 3 bands (1 channel in 3-D), 4 classes."""
    if ctx.invoked_subcommand is not None:
        return
    from gigaseg.models.registry import describe_models

    rows = describe_models()
    width = max(len(str(r["name"])) for r in rows)
    click.echo(f"{'name':<{width}}  dims  {'parameters':>10}  about")
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['dims']}-D   {r['parameters']:>10,}  {r['about']}")


@models_command.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--card", "card_path", type=click.Path(path_type=Path), default=None, help="Card keys over the model's.")
@click.option("--configuration", default=None, help="nnU-Net result folders: the configuration.  [3d_fullres]")
def inspect_command(model: Path, card_path: Path | None, configuration: str | None) -> None:
    """Print MODEL's format, the card in force (each key with where it came from) and what its graph takes."""
    from gigaseg.errors import ModelError
    from gigaseg.models.card import read_card_json
    from gigaseg.models.formats import inspect_model, missing_line

    card = read_card_json(card_path) if card_path else None
    lines, missing = inspect_model(model, card=card, configuration=configuration)
    click.echo("\n".join(lines))
    if missing:
        raise ModelError(missing_line(str(model), missing), parameters=("card",))

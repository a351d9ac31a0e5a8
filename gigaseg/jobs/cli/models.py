"""``gigaseg models``: the architectures and their sizes."""

from __future__ import annotations

import click


@click.command("models")
def models_command() -> None:
    """List the architectures, with parameter counts for 3 bands (1 channel in 3-D), 4 classes."""
    from gigaseg.models.registry import describe_models

    rows = describe_models()
    width = max(len(str(r["name"])) for r in rows)
    click.echo(f"{'name':<{width}}  dims  {'parameters':>10}  about")
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['dims']}-D   {r['parameters']:>10,}  {r['about']}")

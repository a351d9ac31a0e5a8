"""The ``gigaseg`` command line: parse, call one library function, print.

Errors a user can act on (:class:`GigasegError`) end as one line on stderr and
exit code 2; warnings about odd but valid input print as one line each.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any

import click

from gigaseg.errors import GigasegError, cli_message
from gigaseg.jobs.cli.card import card_command
from gigaseg.jobs.cli.demo import demo
from gigaseg.jobs.cli.evaluate import evaluate
from gigaseg.jobs.cli.export import export
from gigaseg.jobs.cli.info import info
from gigaseg.jobs.cli.init_model import init_model
from gigaseg.jobs.cli.models import models_command
from gigaseg.jobs.cli.refine import refine
from gigaseg.jobs.cli.run import run_command
from gigaseg.jobs.cli.segment import segment
from gigaseg.jobs.cli.status import status
from gigaseg.jobs.cli.train import train
from gigaseg.jobs.cli.verify import verify

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 70
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail again (Python's note on SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no descriptor (a test runner's buffer)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class GigasegGroup(click.Group):
    """Turn every user error into one line on stderr, never a traceback.

    The library names parameters by their Python keywords; here each becomes
    the flag of the command that ran (``cache_dir`` -> ``--cache``).
    """

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["gigaseg.command"] = command
        return name, command, rest

    @staticmethod
    def flags(ctx: click.Context) -> dict[str, str]:
        """Keyword -> flag of every option of the command that runs."""
        command = ctx.meta.get("gigaseg.command")
        params = command.params if command else []
        return {p.name: p.opts[0] for p in params if isinstance(p, click.Option) and p.name}

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = lambda message, *rest, **kw: click.echo(
            f"gigaseg: warning: {cli_message(message, self.flags(ctx))}", err=True
        )
        try:
            return super().invoke(ctx)
        except GigasegError as e:
            click.echo(f"gigaseg: error: {cli_message(e, self.flags(ctx))}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("gigaseg: interrupted; rerun with --resume to finish", err=True)
            sys.exit(130)
        except BrokenPipeError:  # stdout's reader left (`gigaseg info S | head -1`): end quietly
            _silence_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"gigaseg: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)


@click.group(cls=GigasegGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(package_name="gigaseg")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Segment scenes too big for memory: GeoTIFF or NIfTI in, georeferenced Zarr mask out."""
    ctx.obj = {"debug": debug}


for command in (
    segment,
    init_model,
    info,
    verify,
    export,
    evaluate,
    demo,
    run_command,
    status,
    refine,
    models_command,
    card_command,
    train,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="gigaseg")

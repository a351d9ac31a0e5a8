"""``gigaseg verify``: check a mask store's chunks against their checksums."""

from __future__ import annotations

import click


@click.command("verify")
@click.argument("store_path", metavar="STORE", type=click.Path())  # str: a directory or an s3:// URL
def verify(store_path: str) -> None:
    """Check every chunk of a mask store against the checksum recorded when it was written.

    Exit 0 when all match; otherwise one line naming the damage, exit 2
    (``gigaseg segment ... --resume`` writes damaged blocks again).
    """
    from gigaseg.io.store import open_store, verify_store

    found = verify_store(store_path)
    done = open_store(store_path).done()
    pending = "" if done.all() else f"; INCOMPLETE: {int(done.sum())} of {done.size} blocks written"
    click.echo(f"{store_path}: {found.checked} chunks match their checksums{pending}")

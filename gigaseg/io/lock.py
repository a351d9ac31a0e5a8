"""One writer per store: an exclusive lock file next to it, with a heartbeat.

``out.zarr.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local disks
and NFSv3+) before the store is touched, and holds the writer's host, PID,
process start time and a random token. While it is held, a thread touches it
every :data:`HEARTBEAT_S` seconds. Another writer finds it and refuses, naming
the holder, unless the lock is stale:

* on the same host, when the holder's process is gone (or its PID now belongs
  to a process started later);
* from another host, when its heartbeat is older than :data:`STALE_S`.

A stale lock is taken over with a warning that names it. The lock sits next to
the store rather than inside it so that ``--overwrite`` can hold it while it
deletes the old store.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from gigaseg.errors import OutputError, StoreLockedError

HEARTBEAT_S = 10.0
STALE_S = 120.0


def lock_path(output: str | Path) -> Path:
    """``out.zarr.lock`` beside the store's real path: every spelling of it (relative,
    ``out.zarr/``, a symbolic link) finds the same lock."""
    return Path(os.path.realpath(output) + ".lock")


class StoreLock:
    """The lock of one store; :meth:`acquire` it, :meth:`release` it (or use ``with``)."""

    def __init__(self, output: str | Path) -> None:
        self.output = str(output)
        self.path = lock_path(output)
        self.token = secrets.token_hex(8)
        self.held = False

    def acquire(self) -> StoreLock:
        for _ in range(3):  # a stale lock moved away lets the next try create ours
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_if_stale()
                continue
            except OSError as e:
                raise OutputError(f"cannot create the lock {self.path}: {e.strerror or e}") from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self._record(), f)
            except OSError as e:  # a full disk: leave no empty lock behind
                self.path.unlink(missing_ok=True)
                raise OutputError(f"cannot write the lock {self.path}: {e.strerror or e}") from None
            self.held = True
            _HEARTBEAT.add(self)
            return self
        raise StoreLockedError(f"cannot take the lock {self.path}: other writers keep taking it")

    def release(self) -> None:
        if not self.held:
            return
        _HEARTBEAT.remove(self)
        self.held = False
        if (read_lock(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _record(self) -> dict[str, Any]:
        me = psutil.Process()
        return {
            "host": socket.gethostname(),
            "pid": me.pid,
            "process_started": me.create_time(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": self.token,
        }

    def _take_if_stale(self) -> None:
        holder = read_lock(self.path)
        why = stale_reason(self.path, holder)
        if why is None:
            raise StoreLockedError(
                f"{self.output} is being written by {describe(holder)} (lock {self.path}); "
                "wait for that run to finish, or stop it"
            )
        if not self.path.is_file():
            raise StoreLockedError(f"{self.path} is not a lock file gigaseg wrote; remove it if no run is writing")
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)  # one taker wins; the others find our new lock
        except FileNotFoundError:
            return
        except OSError as e:
            raise OutputError(f"cannot take over the stale lock {self.path}: {e.strerror or e}") from None
        if read_lock(aside) != holder:  # another writer's fresh lock: put it back
            with contextlib.suppress(OSError):
                os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)
        warnings.warn(f"took over the stale lock of {self.output}: {describe(holder)} ({why})", stacklevel=3)


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's record, or None when it is not one (half written, or not ours)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    return record


def stale_reason(path: Path, holder: dict[str, Any] | None) -> str | None:
    """Why the lock at ``path`` no longer protects a live writer, or None when it does."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "gone"
    if holder is None:  # half written, or not ours: only its age can tell
        return f"unreadable, untouched for {age:.0f} s" if age > STALE_S else None
    if holder.get("host") == socket.gethostname():
        if not _alive(int(holder.get("pid", -1)), holder.get("process_started")):
            return "its process is gone"
        return None
    return f"no heartbeat for {age:.0f} s" if age > STALE_S else None


def _alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return psutil.pid_exists(pid) if pid > 0 else False


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a writer that is starting, or a lock file that is not gigaseg's"
    return f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


class _Heartbeat:
    """One daemon thread touching every lock this process holds."""

    def __init__(self) -> None:
        self.locks: set[StoreLock] = set()
        self.guard = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, lock: StoreLock) -> None:
        with self.guard:
            self.locks.add(lock)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="gigaseg-lock-heartbeat", daemon=True)
                self.thread.start()

    def remove(self, lock: StoreLock) -> None:
        with self.guard:
            self.locks.discard(lock)

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self.guard:
                held = list(self.locks)
            for lock in held:
                with contextlib.suppress(OSError):
                    os.utime(lock.path)


_HEARTBEAT = _Heartbeat()


@contextlib.contextmanager
def store_lock(output: str | Path, *, enabled: bool = True) -> Iterator[StoreLock | None]:
    """Hold the lock of ``output`` for the block (nothing when not ``enabled``: dry runs)."""
    if not enabled:
        yield None
        return
    with StoreLock(output) as lock:
        yield lock

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

On object storage (``s3://bucket/prefix/out.zarr``) the lock is the object
``out.zarr.lock`` beside the store's prefix (:class:`ObjectStoreLock`): a
conditional PUT (``If-None-Match: *``) takes the place of ``O_EXCL``, the
record also holds the heartbeat's time, and the heartbeat rewrites the object.
The holder's own host still judges by its PID; any other by the heartbeat.
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
from gigaseg.io.location import is_remote, location, url

HEARTBEAT_S = 10.0
STALE_S = 120.0
SETTLE_S = 1.0  # after taking over a stale lock on object storage, before checking it is still ours


def lock_path(output: str | Path) -> Path | str:
    """``out.zarr.lock`` beside the store's real path: every spelling of it (relative,
    ``out.zarr/``, a symbolic link) finds the same lock. On object storage, the URL
    ``s3://bucket/prefix/out.zarr.lock``."""
    if is_remote(output):
        return url(output) + ".lock"
    return Path(os.path.realpath(output) + ".lock")


class StoreLock:
    """The lock of one store; :meth:`acquire` it, :meth:`release` it (or use ``with``).

    A store on object storage gets an :class:`ObjectStoreLock`, which behaves the same.
    """

    path: Any  # a Path here, a URL in ObjectStoreLock

    def __new__(cls, output: str | Path = "") -> StoreLock:  # a default: copy and pickle call it bare
        if cls is StoreLock and is_remote(output):
            return super().__new__(ObjectStoreLock)
        return super().__new__(cls)

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

    def beat(self) -> None:
        """Tell other writers this lock's holder is alive (the heartbeat thread's call)."""
        os.utime(self.path)

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


class ObjectStoreLock(StoreLock):
    """The lock of a store on object storage: the object ``<store>.lock``.

    * taken with a conditional PUT (``If-None-Match: *``, s3fs's mode ``"xb"``),
      which fails when the object exists: the ``O_EXCL`` of object storage;
    * its JSON record is the local lock's plus ``heartbeat`` (seconds since the
      epoch), which the heartbeat thread rewrites every :data:`HEARTBEAT_S` s
      with a plain PUT, after checking the token is still ours;
    * stale when its holder's process is gone (judged on the holder's host
      only) or its heartbeat is older than :data:`STALE_S`;
    * a stale lock is taken over by deleting it (after reading it again: the
      same record) and creating ours conditionally; a writer that loses that
      race gets ``FileExistsError`` and reports the live holder. There being no
      conditional DELETE, the winner reads its lock again after
      :data:`SETTLE_S` and gives up when another writer's token is there;
    * release deletes it only when it still holds our token.
    """

    def acquire(self) -> StoreLock:
        fs, key = location(self.path)
        took: tuple[dict[str, Any] | None, str] | None = None
        for _ in range(3):  # a stale lock deleted lets the next try create ours
            try:
                with fs.open(key, "xb") as f:
                    f.write(json.dumps(self._record()).encode())
            except OSError as e:
                if not _object_exists(e):
                    raise OutputError(f"cannot create the lock {self.path}: {e.strerror or e}") from None
                took = self._delete_if_stale() or took
                continue
            if took is not None:
                self._confirm(*took)
            self.held = True
            _HEARTBEAT.add(self)
            return self
        raise StoreLockedError(f"cannot take the lock {self.path}: other writers keep taking it")

    def release(self) -> None:
        if not self.held:
            return
        _HEARTBEAT.remove(self)
        self.held = False
        try:
            if (read_lock(self.path) or {}).get("token") == self.token:
                fs, key = location(self.path)
                fs.rm_file(key)
        except OSError as e:  # the run itself is done: a lock left behind goes stale
            warnings.warn(f"cannot remove the lock {self.path}: {e.strerror or e}", stacklevel=2)

    def beat(self) -> None:
        record = read_lock(self.path)
        if record is None or record.get("token") != self.token:  # taken over while we stalled
            _HEARTBEAT.remove(self)
            warnings.warn(f"lost the lock of {self.output} to {describe(record)}", stacklevel=2)
            return
        fs, key = location(self.path)
        fs.pipe_file(key, json.dumps({**record, "heartbeat": time.time()}).encode())

    def _record(self) -> dict[str, Any]:
        return {**super()._record(), "heartbeat": time.time()}

    def _delete_if_stale(self) -> tuple[dict[str, Any] | None, str] | None:
        """Delete the lock when stale; returns its holder and why, or None when it went meanwhile."""
        holder = read_lock(self.path)
        why = stale_reason(self.path, holder)
        if why is None:
            raise StoreLockedError(
                f"{self.output} is being written by {describe(holder)} (lock {self.path}); "
                "wait for that run to finish, or stop it"
            )
        if why == "gone" or read_lock(self.path) != holder:  # gone, or replaced: look again
            return None
        fs, key = location(self.path)
        try:
            fs.rm_file(key)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OutputError(f"cannot take over the stale lock {self.path}: {e.strerror or e}") from None
        return holder, why

    def _confirm(self, holder: dict[str, Any] | None, why: str) -> None:
        """After a takeover: a writer that deleted the same stale lock at the same time may have
        deleted ours too; the lock then holds its token (or nothing) and we give way."""
        time.sleep(SETTLE_S)
        now = read_lock(self.path)
        if now is None or now.get("token") != self.token:
            raise StoreLockedError(
                f"{self.output} is being written by {describe(now)} (lock {self.path}), which took over "
                "its stale lock at the same time; wait for that run to finish, or stop it"
            )
        warnings.warn(f"took over the stale lock of {self.output}: {describe(holder)} ({why})", stacklevel=4)


def _object_exists(error: OSError) -> bool:
    """Whether a conditional PUT (``If-None-Match: *``) was refused because the object exists.

    s3fs says ``FileExistsError`` when the answer names the condition (AWS, moto);
    SeaweedFS answers ``412 PreconditionFailed`` without naming it, and the PUT
    carried no other condition.
    """
    if isinstance(error, FileExistsError):
        return True
    answer = getattr(error.__cause__, "response", None) or {}
    status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return bool(answer.get("Error", {}).get("Code") == "PreconditionFailed" or status == 412)


def read_lock(path: Path | str) -> dict[str, Any] | None:
    """The lock's record, or None when it is not one (half written, or not ours)."""
    try:
        if is_remote(path):
            fs, key = location(path)
            record = json.loads(fs.cat_file(key))
        else:
            record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    return record


def stale_reason(path: Path | str, holder: dict[str, Any] | None) -> str | None:
    """Why the lock at ``path`` no longer protects a live writer, or None when it does."""
    if is_remote(path):
        return _object_stale_reason(str(path), holder)
    path = Path(path)
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


def _object_stale_reason(path: str, holder: dict[str, Any] | None) -> str | None:
    """:func:`stale_reason` of a lock object: on its holder's host, by PID; elsewhere, by the heartbeat
    in its record (by the object's time when the record is not ours)."""
    fs, key = location(path)
    try:
        modified = fs.modified(key).timestamp()
    except FileNotFoundError:
        return "gone"
    except (OSError, NotImplementedError, AttributeError):
        modified = time.time()
    if holder is None:
        age = time.time() - modified
        return f"unreadable, untouched for {age:.0f} s" if age > STALE_S else None
    if holder.get("host") == socket.gethostname():
        return None if _alive(int(holder.get("pid", -1)), holder.get("process_started")) else "its process is gone"
    beat = holder.get("heartbeat")
    age = time.time() - (float(beat) if isinstance(beat, (int, float)) else modified)
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
                with contextlib.suppress(Exception):  # a lost connection: the next beat tries again
                    lock.beat()


_HEARTBEAT = _Heartbeat()


@contextlib.contextmanager
def store_lock(output: str | Path, *, enabled: bool = True) -> Iterator[StoreLock | None]:
    """Hold the lock of ``output`` for the block (nothing when not ``enabled``: dry runs)."""
    if not enabled:
        yield None
        return
    with StoreLock(output) as lock:
        yield lock

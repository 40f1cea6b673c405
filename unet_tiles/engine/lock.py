"""A run lock on an output, so two runs never write one output at once.

The lock is a small file beside the output (``.NAME.lock`` in the output's
folder, outside the store so the store stays byte-identical to an unlocked
run) holding an exclusive ``flock``. The kernel drops a ``flock`` when its
process dies however it dies, so a crashed or killed run never leaves the
output locked; its JSON content (pid, host, start time) only makes the refusal
message useful::

    {"pid": 4242, "host": "node7", "started": "2026-11-27T02:00:00+00:00"}

Where the filesystem refuses ``flock`` (some network filesystems), the lock
falls back to that content: a lock whose process is gone (same host) or whose
heartbeat (the file's mtime, touched every ``HEARTBEAT_S``) is older than
``STALE_S`` is stale and taken over.

Remote (fsspec URL) outputs are not locked: object stores offer no lock; a
warning says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles.errors import OutputConflictError

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 300.0


def lock_path(output_url: str) -> Path | None:
    """Where the lock of ``output_url`` lives; None for remote outputs."""
    if "://" in output_url and not output_url.startswith("file://"):
        return None
    path = Path(output_url.removeprefix("file://")).resolve()
    return path.parent / f".{path.name}.lock"


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"started {info.get('started', '?')}")


def _read_info(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(path: Path, info: dict[str, Any]) -> bool:
    """Fallback staleness (no flock): process gone on this host, or heartbeat too old."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return not _pid_alive(info["pid"])
    return age > STALE_S


class RunLock:
    """An exclusive lock on one output; use as a context manager."""

    def __init__(self, output_url: str) -> None:
        self.output_url = output_url
        self.path = lock_path(output_url)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _refuse(self, info: dict[str, Any]) -> OutputConflictError:
        return OutputConflictError(
            f"output {self.output_url!r} is being written by another unet-tiles run "
            f"({_describe(info)}; lock {self.path}); wait for it to finish, the lock "
            "frees itself when that run exits"
        )

    def acquire(self) -> None:
        if self.path is None:
            logger.warning("output %s is remote: it is not locked against a second run",
                           self.output_url)
            return
        for _ in range(20):  # only loops while another process replaces the file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if not self._flock(fd):
                    raise self._refuse(_read_info(self.path))
                # The file may have been unlinked by its releasing owner between our
                # open and our flock: then we hold a lock on a dead inode; retry.
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            self._write_info()
            self._start_heartbeat()
            return
        raise OutputConflictError(f"could not lock output {self.output_url!r} ({self.path})")

    def _flock(self, fd: int) -> bool:
        """True when locked; False when another live process holds the lock."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        # No flock on this filesystem: trust the content and its heartbeat.
        assert self.path is not None
        info = _read_info(self.path)
        return not (info and not _is_stale(self.path, info))

    def _write_info(self) -> None:
        assert self._fd is not None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "output": self.output_url}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.path)  # type: ignore[arg-type]

        self._heartbeat = threading.Thread(target=beat, name="unet-tiles-lock", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1)
            self._heartbeat = None
        if self._fd is not None and self.path is not None:
            # Unlink while still holding the lock, then close (see acquire's inode check).
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(output_url: str) -> Iterator[RunLock]:
    """Hold the run lock of ``output_url`` for the duration of the block."""
    with RunLock(output_url) as lock:
        yield lock


__all__ = ["HEARTBEAT_S", "STALE_S", "RunLock", "lock_path", "output_lock"]

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

A remote (fsspec URL) output is locked by a *lease*: a small JSON object
beside the output (``OUTPUT.lease.json``, a sibling key, never inside the store)
holding the owner, host, pid, start time and lease length. It is taken with a
conditional create (S3 ``If-None-Match: *``), renewed by a heartbeat every third
of its length with a conditional overwrite of the holder's own version
(``If-Match: ETAG``) and deleted on release. A lease whose object was last
written more than its length ago (the holder crashed or lost the network) has
expired and is taken over, again conditionally, so two runs racing for it
cannot both win. Its length is ``LEASE_S``, or ``UNET_TILES_LEASE_S`` seconds.
Object stores (``LEASED_PROTOCOLS``: S3, GCS, Azure) are leased; any other
remote filesystem is not locked, with a warning. A store without conditional
writes gets a best-effort lease (look, then write) and a warning.
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
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles.errors import OutputConflictError

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 300.0
# A remote output's lease lasts this long unless renewed (UNET_TILES_LEASE_S overrides).
LEASE_S = 120.0
LEASE_SUFFIX = ".lease.json"
# Object stores, whose outputs are leased; other remote filesystems (memory://,
# in-process only, or stores without conditional writes) are not locked, with a warning.
LEASED_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def lease_seconds() -> float:
    value = os.environ.get("UNET_TILES_LEASE_S", "")
    try:
        seconds = float(value) if value else LEASE_S
    except ValueError:
        raise OutputConflictError(
            f"UNET_TILES_LEASE_S={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise OutputConflictError(f"UNET_TILES_LEASE_S={value!r} must be above 0")
    return seconds


def lease_url(output_url: str) -> str | None:
    """Where the lease of a remote ``output_url`` lives; None for local outputs."""
    if "://" in output_url and not output_url.startswith("file://"):
        return output_url.rstrip("/") + LEASE_SUFFIX
    return None


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
        self._lease: RemoteLease | None = None

    def _refuse(self, info: dict[str, Any]) -> OutputConflictError:
        return OutputConflictError(
            f"output {self.output_url!r} is being written by another unet-tiles run "
            f"({_describe(info)}; lock {self.path}); wait for it to finish, the lock "
            "frees itself when that run exits"
        )

    def acquire(self) -> None:
        if self.path is None:
            if self.output_url.split("://", 1)[0].lower() not in LEASED_PROTOCOLS:
                logger.warning("output %s is remote: it is not locked against a second run",
                               self.output_url)
                return
            lease = RemoteLease(self.output_url)
            lease.acquire()
            self._lease = lease
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
        if self._lease is not None:
            self._lease.release()
            self._lease = None
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


def _etag(response: Any) -> str | None:
    if isinstance(response, dict):
        tag = response.get("ETag") or response.get("etag")
        return str(tag) if tag else None
    return None


class RemoteLease:
    """The lease object of a remote output (see the module's docstring)."""

    def __init__(self, output_url: str) -> None:
        import fsspec

        from unet_tiles.pipeline.source import check_remote

        self.output_url = output_url
        url = lease_url(output_url)
        assert url is not None
        self.url = url
        self.seconds = lease_seconds()
        check_remote(output_url, "output", OutputConflictError)
        self.fs, self.key = fsspec.core.url_to_fs(url)
        self.owner = uuid.uuid4().hex
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _content(self) -> bytes:
        now = time.time()
        info = {"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                "started": self.started, "output": self.output_url, "lease_s": self.seconds,
                "renewed": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
                "expires": datetime.fromtimestamp(now + self.seconds, UTC)
                .isoformat(timespec="seconds")}
        return (json.dumps(info) + "\n").encode()

    def _fail(self, exc: BaseException) -> OutputConflictError:
        from unet_tiles.pipeline.source import endpoint_of

        detail = " ".join(str(exc).split()) or type(exc).__name__
        return OutputConflictError(
            f"output {self.output_url!r}: cannot write its lease {self.url} at "
            f"{endpoint_of(self.fs)} ({detail}); check the bucket and its permissions"
        )

    def _put(self, *, create: bool = False, match: str | None = None) -> None:
        kwargs: dict[str, Any] = {"mode": "create"} if create else {}
        if match is not None:
            kwargs["IfMatch"] = match
        response = self.fs.pipe_file(self.key, self._content(), **kwargs)
        self._etag = _etag(response) or self._current()[1]

    def _current(self) -> tuple[dict[str, Any], str | None, float | None]:
        """(content, ETag, age in seconds) of the lease object now; ({}, None, None)
        when there is none."""
        self.fs.invalidate_cache(self.key)
        try:
            info = self.fs.info(self.key)
            data = self.fs.cat_file(self.key)
        except FileNotFoundError:
            return {}, None, None
        try:
            content = json.loads(data)
        except ValueError:
            content = {}
        modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        if isinstance(modified, datetime):
            stamp = modified.timestamp()
        elif isinstance(modified, (int, float)):
            stamp = float(modified)
        else:
            stamp = time.time()
        tag = info.get("ETag") or info.get("etag")
        return (content if isinstance(content, dict) else {}), \
            (str(tag) if tag else None), time.time() - stamp

    def _refuse(self, content: dict[str, Any], left: float) -> OutputConflictError:
        return OutputConflictError(
            f"output {self.output_url!r} is being written by another unet-tiles run "
            f"({_describe(content)}; lease {self.url}, expires in {max(0, round(left))} s "
            "unless renewed); wait for it to finish, a crashed run's lease expires by itself"
        )

    def acquire(self) -> None:
        for _ in range(5):
            try:
                self._put(create=True)
                break
            except FileExistsError:
                pass
            except (TypeError, NotImplementedError, ValueError):
                # No conditional create on this filesystem: look, then write.
                logger.warning("%s: this store has no conditional writes; the lease %s is "
                               "best-effort", self.output_url, self.url)
                content, _tag, age = self._current()
                length = float(content.get("lease_s") or self.seconds)
                if age is not None and age < length:
                    raise self._refuse(content, length - age) from None
                self._put()
                break
            except OSError as exc:
                raise self._fail(exc) from None
            content, tag, age = self._current()
            if age is None:
                continue  # released meanwhile: try to create it again
            length = float(content.get("lease_s") or self.seconds)
            if age < length:
                raise self._refuse(content, length - age)
            logger.warning("%s: taking over the expired lease of %s (%.0f s old)",
                           self.output_url, _describe(content), age)
            try:
                self._put(match=tag)  # only if nobody renewed or took it meanwhile
                break
            except (FileNotFoundError, OSError):
                continue  # someone else got there first: look again
        else:
            content, _tag, age = self._current()
            raise self._refuse(content, float(content.get("lease_s") or self.seconds)
                               - (age or 0.0))
        self._thread = threading.Thread(target=self._beat, name="unet-tiles-lease",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self._put(match=self._etag)
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
                    self.lost = True
                    logger.error("%s: lost its lease %s to another run; stop this run",
                                 self.output_url, self.url)
                    return
                logger.warning("%s: could not renew its lease (%s); retrying",
                               self.output_url, type(exc).__name__)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lost:
            return
        with contextlib.suppress(Exception):
            _content, tag, _age = self._current()
            if tag is not None and tag == self._etag:
                self.fs.rm_file(self.key)


@contextlib.contextmanager
def output_lock(output_url: str) -> Iterator[RunLock]:
    """Hold the run lock of ``output_url`` for the duration of the block."""
    with RunLock(output_url) as lock:
        yield lock


__all__ = ["HEARTBEAT_S", "LEASED_PROTOCOLS", "LEASE_S", "STALE_S", "RemoteLease", "RunLock",
           "lease_seconds", "lease_url", "lock_path", "output_lock"]

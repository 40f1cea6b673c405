"""A flaky fsspec filesystem for fault-injection tests.

``flaky:///abs/path`` is the local filesystem, except that the first N reads
or writes of the keys matching a pattern fail with a transient ``OSError``
(or ``TimeoutError``), as a network filesystem or object store does now and
then. Faults are armed per process with ``arm``; use the filesystem from an
in-process dask cluster (``processes=False``) so workers see the same state.

    arm(read=r"img\\.zarr/c/1/", times=2)   # the first 2 reads of row 1 fail
"""

from __future__ import annotations

import errno
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "flaky"


@dataclass
class _Fault:
    op: str
    pattern: re.Pattern[str]
    remaining: int
    error: type[OSError]


@dataclass
class _State:
    faults: list[_Fault] = field(default_factory=list)
    injected: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


STATE = _State()


def arm(*, read: str | None = None, write: str | None = None, times: int = 1,
        error: type[OSError] = OSError) -> None:
    """Fail the first ``times`` reads (or writes) of paths matching the regex."""
    with STATE.lock:
        for op, pattern in (("read", read), ("write", write)):
            if pattern is not None:
                STATE.faults.append(_Fault(op, re.compile(pattern), times, error))


def reset() -> list[tuple[str, str]]:
    """Disarm every fault; return the (op, path) of each fault injected so far."""
    with STATE.lock:
        injected = list(STATE.injected)
        STATE.faults.clear()
        STATE.injected.clear()
    return injected


def _maybe_fail(op: str, path: str) -> None:
    with STATE.lock:
        for fault in STATE.faults:
            if fault.op == op and fault.remaining > 0 and fault.pattern.search(path):
                fault.remaining -= 1
                STATE.injected.append((op, path))
                raise fault.error(errno.EIO, f"injected transient {op} error", path)


class FlakyFileSystem(LocalFileSystem):
    protocol = PROTOCOL  # type: ignore[assignment]
    root_marker = "/"

    def __init__(self, auto_mkdir: bool = True, **kwargs: Any) -> None:
        super().__init__(auto_mkdir=auto_mkdir, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str) and path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        _maybe_fail("read", str(path))
        return super().cat_file(path, start=start, end=end, **kwargs)  # type: ignore[no-any-return]

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                  **kwargs: Any) -> None:
        _maybe_fail("write", str(path))
        super().pipe_file(path, value, mode=mode, **kwargs)


fsspec.register_implementation(PROTOCOL, FlakyFileSystem, clobber=True)

__all__ = ["PROTOCOL", "FlakyFileSystem", "arm", "reset"]

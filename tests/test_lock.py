"""Unit tests of ``unet_tiles/engine/lock.py``: the run lock beside an output.

A live holder is refused with a message naming it; a crashed run's leftover
lock file never blocks; where the filesystem refuses ``flock`` the lock falls
back to its content and heartbeat. Two real CLI runs on one output are
test_fault_two_runs.py.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from unet_tiles.engine import lock as lock_module
from unet_tiles.engine.lock import STALE_S, RunLock, lock_path, output_lock
from unet_tiles.errors import OutputConflictError

if TYPE_CHECKING:
    from pathlib import Path


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    # A crashed run's leftover lock file (a dead pid, no flock held) never blocks.
    path = lock_path(out)
    assert path == tmp_path / ".out.zarr.lock"
    path.write_text(json.dumps({"pid": 999_999_999, "host": "gone", "started": "yesterday"}))
    with RunLock(out):
        holder = subprocess.run(
            [sys.executable, "-c", "from unet_tiles.engine.lock import RunLock; import sys; "
             f"RunLock({out!r}).acquire()"], capture_output=True, text=True, check=False)
        assert holder.returncode == 1
        assert "is being written by another unet-tiles run" in holder.stderr
        assert f"pid {os.getpid()}" in holder.stderr
        with pytest.raises(OutputConflictError, match="another unet-tiles run"):
            RunLock(out).acquire()
    assert not path.exists()
    with RunLock(out):  # free again
        pass


def test_lock_path_is_beside_the_output_and_none_for_remote_outputs(tmp_path: Path) -> None:
    assert lock_path(str(tmp_path / "a" / "out.zarr")) == tmp_path / "a" / ".out.zarr.lock"
    assert lock_path(f"file://{tmp_path}/out.zarr") == tmp_path / ".out.zarr.lock"
    assert lock_path(f"{tmp_path}/out.zarr/") == tmp_path / ".out.zarr.lock"
    for url in ("s3://bucket/out.zarr", "memory://out.zarr", "gs://b/c/out.zarr"):
        assert lock_path(url) is None, url


def test_held_lock_names_its_run_and_leaves_the_store_alone(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with RunLock(out) as held:
        assert held.path == tmp_path / ".out.zarr.lock"
        info = json.loads(held.path.read_text())
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["output"] == out
        assert info["started"].endswith("+00:00")
        # Outside the store: the store stays byte-identical to an unlocked run's.
        assert not (tmp_path / "out.zarr").exists()
        with pytest.raises(OutputConflictError) as refused:
            RunLock(out).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert str(held.path) in message
        assert "the lock frees itself when that run exits" in message
    assert not list(tmp_path.iterdir())  # and the lock file is gone


def test_output_lock_holds_for_the_block(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with output_lock(out) as held:
        assert isinstance(held, RunLock)
        with pytest.raises(OutputConflictError, match="another unet-tiles run"):
            RunLock(out).acquire()
    with output_lock(out):  # released
        pass
    assert not (tmp_path / ".out.zarr.lock").exists()


def test_remote_outputs_are_not_locked_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="unet_tiles.engine.lock"), \
            RunLock("memory://out.zarr"), RunLock("memory://out.zarr"):
        pass  # a second run on it is not refused
    assert "is remote: it is not locked against a second run" in caplog.text


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that refuses ``flock`` (as some network filesystems do)."""
    import fcntl

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


@pytest.mark.usefixtures("no_flock")
def test_without_flock_a_live_holder_is_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with RunLock(out):
        with pytest.raises(OutputConflictError, match=f"pid {os.getpid()}"):
            RunLock(out).acquire()
    with RunLock(out):  # released
        pass


@pytest.mark.usefixtures("no_flock")
def test_without_flock_a_dead_holder_on_this_host_is_taken_over(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    path = tmp_path / ".out.zarr.lock"
    path.write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname(),
                                "started": "yesterday"}))
    with RunLock(out):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


@pytest.mark.usefixtures("no_flock")
def test_without_flock_another_host_holds_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    path = tmp_path / ".out.zarr.lock"
    path.write_text(json.dumps({"pid": 4242, "host": "node7", "started": "today"}))
    with pytest.raises(OutputConflictError, match="pid 4242 on host node7, started today"):
        RunLock(out).acquire()
    old = time.time() - STALE_S - 60
    os.utime(path, (old, old))  # its heartbeat stopped: that run is gone
    with RunLock(out):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_heartbeat_touches_the_lock_file_while_held(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    out = str(tmp_path / "out.zarr")
    with RunLock(out) as held:
        assert held.path is not None
        old = time.time() - 3600
        os.utime(held.path, (old, old))
        deadline = time.monotonic() + 10
        while held.path.stat().st_mtime <= old + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.path.stat().st_mtime > old + 1, "the heartbeat never touched the lock"

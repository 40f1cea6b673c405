"""Archives on object storage: s3:// inputs, outputs and archive roots on a real
S3-compatible server (moto's server mode on 127.0.0.1, tests/s3_server.py).

Credentials and the endpoint come from the usual AWS environment variables only
(the ``s3`` fixture sets them, with a random secret per run); the secret never
appears in an output store, on stdout or stderr. Remote outputs are locked by a
lease object beside them (engine/lock.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fault_helpers import (  # noqa: F401
    SUMMARY,
    make_image,
    model_fixture,
    spawn_fixture,
    store_files,
)
from s3_server import S3, free_port, require_auth, s3_fixture, s3_server_fixture, start_server  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Callable

pytest.importorskip("s3fs")
pytest.importorskip("moto")

LEASE_TAKEN = "is being written by another unet-tiles run"


def segment_argv(inp: str, out: str, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unet_tiles.cli", "segment", inp, out, "--model", str(model),
            "--block-size", "64", "--no-progress", "--cluster", "cpu", "--workers", "1",
            *extra]


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def done_over_s3(url: str) -> np.ndarray | None:
    import zarr

    try:
        return np.asarray(zarr.open_array(url, path="done", mode="r")[...]).astype(bool)
    except Exception:
        return None


def assert_no_secret(s3: S3, *texts: str, store: str | None = None) -> None:
    secret = s3.secret.encode()
    for text in texts:
        assert s3.secret not in text
    if store is not None:
        objects = s3.objects(store)
        assert objects
        leaked = [key for key, data in objects.items() if secret in data]
        assert not leaked, leaked


# --- segmenting ------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_segment_s3_to_s3_equals_local(tmp_path: Path, model: Path, s3: S3) -> None:
    import zarr

    local_in = make_image(tmp_path / "img.zarr")
    inp = s3.upload(local_in, "in/img.zarr")
    local_out = str(tmp_path / "out.zarr")
    done = run(segment_argv(local_in, local_out, model))
    assert done.returncode == 0, done.stderr

    out = s3.url("results/out.zarr")
    argv = segment_argv(inp, out, model)
    remote = run([*argv[:3], "--verbose", *argv[3:]])  # debug logs: every message
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert SUMMARY.search(remote.stdout + remote.stderr)

    want = zarr.open_array(local_out, path="labels", mode="r")[...]
    got = zarr.open_array(out, path="labels", mode="r")[...]
    np.testing.assert_array_equal(got, want)
    # Every object under the S3 store is the local file of the same relative key,
    # byte for byte; only the root zarr.json differs (its record names the input's URL).
    objects = s3.objects("results/out.zarr")
    files = store_files(local_out)
    assert sorted(objects) == sorted(files)
    differ = [key for key in files if key != "zarr.json" and objects[key] != files[key]]
    assert not differ, differ[:5]
    record = json.loads(objects["zarr.json"])["attributes"]["unet_tiles"]
    assert record["status"] == "complete"
    # The lease is released; no lock file appears anywhere.
    assert not s3.fs().exists(f"{s3.bucket}/results/out.zarr.lease.json")
    # The secret is in no object, nor in the (verbose) logs.
    assert_no_secret(s3, remote.stdout, remote.stderr, store="results/out.zarr")
    fs = s3.fs()  # one client: making one costs a quarter of a second
    assert all(s3.secret.encode() not in fs.cat_file(key) for key in fs.find(s3.bucket))


@pytest.mark.cluster
@pytest.mark.slow
def test_killed_driver_resumes_byte_identical_on_s3(tmp_path: Path, model: Path, s3: S3,
                                                    spawn: Callable[..., Any]) -> None:
    local_in = make_image(tmp_path / "big.zarr", shape=(256, 320))  # 20 blocks
    inp = s3.upload(local_in, "in/big.zarr")
    ref = s3.url("ref.zarr")
    first = run(segment_argv(inp, ref, model))
    assert first.returncode == 0, first.stderr
    total = int(np.prod(done_over_s3(ref).shape))  # type: ignore[union-attr]

    out = s3.url("out.zarr")
    # A short lease, so that the killed run's lease expires within the test.
    proc = spawn(segment_argv(inp, out, model), env={**os.environ, "UNET_TILES_LEASE_S": "4"})
    deadline = time.monotonic() + 180
    while True:
        grid = done_over_s3(out)
        if grid is not None and grid.sum() >= 3:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no block done in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local cluster
    _, err = proc.communicate(timeout=30)
    done = done_over_s3(out)
    assert done is not None
    assert 3 <= done.sum() < total, "kill came too late to test anything"
    assert s3.fs().exists(f"{s3.bucket}/out.zarr.lease.json")  # never released
    time.sleep(5.5)  # it expires

    again = run(segment_argv(inp, out, model))
    assert again.returncode == 0, again.stderr
    computed, skipped = map(int, SUMMARY.search(again.stdout + again.stderr).groups())  # type: ignore[union-attr]
    assert skipped == int(done.sum())
    assert computed == total - skipped
    assert s3.objects("out.zarr") == s3.objects("ref.zarr")
    assert_no_secret(s3, err, again.stdout, again.stderr, store="out.zarr")


# --- archives --------------------------------------------------------------------------------


def test_find_images_under_a_bucket_prefix(tmp_path: Path, s3: S3) -> None:
    from unet_tiles.archive.discover import find_images

    s3.upload(make_image(tmp_path / "one.zarr", shape=(64, 64)), "archive/day1/one.zarr")
    s3.upload(make_image(tmp_path / "two.zarr", shape=(64, 64)), "archive/day2/two.zarr")
    s3.upload(make_image(tmp_path / "other.zarr", shape=(64, 64)), "elsewhere/other.zarr")
    found = find_images(s3.url("archive/"))
    assert [ref.relative for ref in found] == ["day1/one.zarr", "day2/two.zarr"]
    assert [ref.url for ref in found] == [s3.url("archive/day1/one.zarr"),
                                          s3.url("archive/day2/two.zarr")]
    found = find_images(s3.url("archive"), exclude=[s3.url("archive/day2")])
    assert [ref.relative for ref in found] == ["day1/one.zarr"]


def test_polling_tracker_applies_the_arrival_rule(tmp_path: Path, s3: S3) -> None:
    from unet_tiles.archive.arrival import PollingTracker

    local = Path(make_image(tmp_path / "img.zarr", shape=(128, 128)))
    now = [0.0]
    tracker = PollingTracker(s3.url("archive"), quiet_s=5.0, clock=lambda: now[0])
    s3.fs().mkdir(f"{s3.bucket}/archive")
    assert tracker.existing(as_arrivals=False) == []
    fs = s3.fs()
    key = f"{s3.bucket}/archive/img.zarr"
    fs.pipe_file(f"{key}/zarr.json", (local / "zarr.json").read_bytes())
    fs.pipe_file(f"{key}/c/0/0", (local / "c/0/0").read_bytes())
    assert tracker.poll() == []  # incomplete
    now[0] += 10
    assert tracker.poll() == []  # still incomplete, however long it waits
    for chunk in ("c/0/1", "c/1/0", "c/1/1"):
        fs.pipe_file(f"{key}/{chunk}", (local / chunk).read_bytes())
    assert tracker.poll() == []  # complete, first look
    now[0] += 2
    assert tracker.poll() == []  # not yet quiet_s since the first complete look
    now[0] += 4
    arrived = tracker.poll()
    assert [ref.url for ref in arrived] == [s3.url("archive/img.zarr")]
    assert arrived[0].relative == "img.zarr"
    now[0] += 10
    assert tracker.poll() == []  # once per content


@pytest.mark.slow
def test_watch_polls_a_remote_root(tmp_path: Path, s3: S3) -> None:
    from unet_tiles.archive.arrival import watch

    local = Path(make_image(tmp_path / "img.zarr", shape=(128, 128)))
    s3.upload(make_image(tmp_path / "old.zarr", shape=(64, 64)), "watched/old.zarr")
    arrivals: list[str] = []
    ready = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(s3.url("watched/"), lambda r: arrivals.append(
        r.relative)), kwargs={"quiet_s": 1.0, "poll_interval_s": 0.3, "stop": stop,
                              "on_ready": ready.set}, daemon=True)
    thread.start()
    try:
        assert ready.wait(60)
        fs = s3.fs()
        key = f"{s3.bucket}/watched/new/img.zarr"
        fs.pipe_file(f"{key}/zarr.json", (local / "zarr.json").read_bytes())
        fs.pipe_file(f"{key}/c/0/0", (local / "c/0/0").read_bytes())
        time.sleep(3)
        assert arrivals == []  # half-written: never reported
        for chunk in ("c/0/1", "c/1/0", "c/1/1"):
            fs.pipe_file(f"{key}/{chunk}", (local / chunk).read_bytes())
        deadline = time.monotonic() + 60
        while not arrivals and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        assert arrivals == ["new/img.zarr"]  # once; the old image never arrives
    finally:
        stop.set()
        thread.join(timeout=30)


# --- the run lock on a remote output: a lease ------------------------------------------------

HOLD = ("import sys, time\n"
        "from unet_tiles.engine.lock import RunLock\n"
        "lock = RunLock(sys.argv[1])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


def hold(spawn: Callable[..., Any], url: str, lease_s: float) -> Any:
    proc = spawn([sys.executable, "-c", HOLD, url],
                 env={**os.environ, "UNET_TILES_LEASE_S": str(lease_s)})
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.communicate(timeout=10)
    return proc


@pytest.mark.cluster
@pytest.mark.slow
def test_lease_refuses_a_second_run_and_expires_after_a_crash(
        tmp_path: Path, model: Path, s3: S3, spawn: Callable[..., Any]) -> None:
    inp = s3.upload(make_image(tmp_path / "img.zarr", shape=(64, 64)), "in/img.zarr")
    out = s3.url("out.zarr")
    holder = hold(spawn, out, lease_s=4)
    lease = json.loads(s3.fs().cat_file(f"{s3.bucket}/out.zarr.lease.json"))
    assert lease["pid"] == holder.pid
    assert {"owner", "host", "started", "expires", "lease_s"} <= set(lease)
    before = s3.all_keys()
    # Past the lease's length: the holder's heartbeat keeps it alive.
    time.sleep(5)
    second = run(segment_argv(inp, out, model, "--cluster", "local"))
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert LEASE_TAKEN in lines[0]
    assert f"pid {holder.pid}" in lines[0]
    assert s3.all_keys() == before  # nothing written

    os.killpg(holder.pid, signal.SIGKILL)  # crashes: its lease is never released
    holder.communicate(timeout=10)
    time.sleep(5.5)  # the lease expires
    third = run(segment_argv(inp, out, model, "--cluster", "local"))
    assert third.returncode == 0, third.stderr
    assert done_over_s3(out).all()  # type: ignore[union-attr]
    assert not s3.fs().exists(f"{s3.bucket}/out.zarr.lease.json")


def test_lease_in_one_process(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    from unet_tiles.engine.lock import RunLock
    from unet_tiles.errors import OutputConflictError

    out = s3.url("x/out.zarr")
    monkeypatch.setenv("UNET_TILES_LEASE_S", "30")
    with RunLock(out):
        with pytest.raises(OutputConflictError, match=LEASE_TAKEN), RunLock(out):
            pass
        assert s3.fs().exists(f"{s3.bucket}/x/out.zarr.lease.json")
        # The lease is a sibling of the store, never inside it...
        assert not s3.fs().exists(f"{s3.bucket}/x/out.zarr")
        from unet_tiles.pipeline import writer

        assert not writer.output_exists(out)
        s3.fs().pipe_file(f"{s3.bucket}/x/out.zarr/zarr.json", b"{}")
        assert writer.output_exists(out)
        # ...so removing the store (a redo) keeps it.
        writer.remove_output(out)
        assert not writer.output_exists(out)
        assert s3.fs().exists(f"{s3.bucket}/x/out.zarr.lease.json")
    assert not s3.fs().exists(f"{s3.bucket}/x/out.zarr.lease.json")
    with RunLock(out):
        pass


# --- bad inputs: one line, exit 2, nothing written -------------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_missing_bucket_input_and_output(tmp_path: Path, model: Path, s3: S3) -> None:
    inp = s3.upload(make_image(tmp_path / "img.zarr", shape=(64, 64)), "in/img.zarr")
    before = s3.all_keys()
    line = one_line_error(run(segment_argv("s3://no-such-bucket/img.zarr",
                                           s3.url("out.zarr"), model)),
                          "input", "'no-such-bucket' does not exist")
    assert s3.secret not in line
    one_line_error(run(segment_argv(inp, "s3://no-such-bucket/out.zarr", model)),
                   "output", "'no-such-bucket' does not exist")
    one_line_error(run(segment_argv(s3.url("in/nothing.zarr"), s3.url("out.zarr"), model)),
                   "input")
    assert s3.all_keys() == before
    assert not s3.fs().exists("no-such-bucket")


@pytest.mark.slow
def test_unreachable_endpoint(tmp_path: Path, model: Path, s3: S3) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = run(segment_argv(s3.url("in/img.zarr"), s3.url("out.zarr"), model),
                 env={"AWS_ENDPOINT_URL": dead})
    line = one_line_error(result, "cannot reach the object store", dead)
    assert s3.secret not in result.stderr + result.stdout
    assert "output" in line  # the output is checked first, before anything is written
    local_in = make_image(tmp_path / "img.zarr", shape=(64, 64))
    result = run(segment_argv(s3.url("in/img.zarr"), str(tmp_path / "out.zarr"), model),
                 env={"AWS_ENDPOINT_URL": dead})
    one_line_error(result, "input", "cannot reach the object store")
    result = run(segment_argv(local_in, s3.url("out.zarr"), model),
                 env={"AWS_ENDPOINT_URL": dead})
    one_line_error(result, "output", "cannot reach the object store")
    assert not (tmp_path / "out.zarr").exists()
    assert s3.all_keys() == []


def test_wrong_credentials(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_server(tmp_path / "moto-auth.log") as server:
        key_id, secret = require_auth(server.endpoint)
        s3 = S3(server.endpoint, key_id, secret, "authbucket")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        s3.fs().mkdir(s3.bucket)
        inp = s3.upload(make_image(tmp_path / "img.zarr", shape=(64, 64)), "in/img.zarr")
        before = s3.all_keys()
        wrong = "wrong-" + secret[::-1]
        result = run(segment_argv(inp, s3.url("out.zarr"), model),
                     env={"AWS_SECRET_ACCESS_KEY": wrong})
        line = one_line_error(result, "output", "refused", "AWS_SECRET_ACCESS_KEY")
        assert wrong not in result.stderr
        assert secret not in result.stderr
        result = run(segment_argv(inp, str(tmp_path / "out.zarr"), model),
                     env={"AWS_SECRET_ACCESS_KEY": wrong})
        one_line_error(result, "input", "refused")
        assert s3.all_keys() == before
        assert not (tmp_path / "out.zarr").exists()
        assert line
        # The right secret is accepted by the same server (it uploaded the input);
        # moto's signature checks are not complete enough for a whole run.
        assert s3.fs().cat_file(f"{s3.bucket}/in/img.zarr/zarr.json")

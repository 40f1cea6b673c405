"""Fault injection against the real components: processes killed, files corrupted.

Every test compares its result with an uninterrupted run of the same image
(``reference``) made on the shared session cluster; "byte-identical" means
every file under the two output stores has the same bytes (nothing excluded).

Numbers below refer to the faults of issue 6.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.cluster]

SHAPE = (256, 320)
CHUNK = 64
BLOCK = "64"
SUMMARY = re.compile(r"in (\d+) blocks \((\d+) already done\)")


# --- helpers ----------------------------------------------------------------------------


def make_image(path: Path, shape: tuple[int, int] = SHAPE, seed: int = 0) -> str:
    import zarr

    rng = np.random.default_rng(seed)
    array = zarr.create_array(str(path), shape=shape, chunks=(CHUNK, CHUNK), dtype="uint8")
    array[...] = rng.integers(0, 255, shape, dtype=np.uint8)
    return str(path)


def reference(client: Any, inp: str, out: str, model: Path, *extra: str) -> str:
    """An uninterrupted run of ``inp`` into ``out`` with the CLI's parameters."""
    from unet_tiles.run import SegmentRequest, execute, prepare, validate

    kind = extra[extra.index("--output") + 1] if "--output" in extra else "labels"
    run = validate(SegmentRequest(inp, out, str(model), output_kind=kind,
                                  block_size=int(BLOCK)))
    prepare(run)
    execute(run, client, progress=False)
    return out


def store_files(root: str | Path) -> dict[str, bytes]:
    """Every file under an output store, by relative path."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def assert_identical(a: str | Path, b: str | Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb), set(fa) ^ set(fb)
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:5]}"


def done_grid(out: str) -> np.ndarray | None:
    import zarr

    try:
        return np.asarray(zarr.open_array(out, path="done", mode="r")[...]).astype(bool)
    except Exception:
        return None


def segment_argv(inp: str, out: str, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unet_tiles.cli", "segment", inp, out, "--model", str(model),
            "--block-size", BLOCK, "--no-progress", "--workers", "2", *extra]


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start processes in their own process group; kill every group in teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)


def run_cli(spawn: Callable[..., subprocess.Popen[str]], argv: list[str],
            timeout: float = 240) -> tuple[int, str, str]:
    proc = spawn(argv)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_group(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def wait_for_done(out: str, proc: subprocess.Popen[str], at_least: int, timeout: float = 120,
                  ) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        grid = done_grid(out)
        if grid is not None and grid.sum() >= at_least:
            return grid
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} blocks done after {timeout} s")


def blocks_reading_chunk(inp: str, model: Path, chunk: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Indices of the blocks whose read window touches input chunk ``chunk``."""
    from unet_tiles.run import SegmentRequest, validate
    from unet_tiles.window import input_region

    run = validate(SegmentRequest(inp, inp + "-probe.zarr", str(model), block_size=int(BLOCK)))
    hit = set()
    for block in run.plan:
        region, _ = input_region(run.source, block, run.plan.dims)
        if all(s.start // CHUNK <= c < -(-s.stop // CHUNK) for s, c in zip(region, chunk,
                                                                         strict=True)):
            hit.add(block.index)
    return hit


@pytest.fixture
def model(make_model: Callable[..., Path]) -> Path:
    return make_model(classes=2)


# --- 2: the driver is killed mid-run -------------------------------------------------------


@pytest.mark.slow
def test_driver_killed_resumes_byte_identical(tmp_path: Path, model: Path, client: Any,
                                              spawn: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "img.zarr")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model)
    out = str(tmp_path / "out.zarr")
    total = int(np.prod(done_grid(ref).shape))

    proc = spawn(segment_argv(inp, out, model))
    wait_for_done(out, proc, at_least=3)
    kill_group(proc)  # the driver and its local cluster, SIGKILL, mid-run
    done = done_grid(out)
    assert done is not None
    assert 3 <= done.sum() < total, "kill came too late to test anything"
    # Every block marked done is fully written: its labels equal the reference's.
    import zarr

    got = zarr.open_array(out, path="labels", mode="r")
    want = zarr.open_array(ref, path="labels", mode="r")
    for index in zip(*np.nonzero(done), strict=True):
        sl = tuple(slice(i * CHUNK, (i + 1) * CHUNK) for i in index)
        np.testing.assert_array_equal(got[sl], want[sl])

    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 0, stderr
    computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    # Nothing done is redone: only the blocks in flight or never started run again.
    assert skipped == int(done.sum())
    assert computed == total - skipped
    assert_identical(out, ref)
    assert not list(Path(out).rglob("*.partial"))
    assert not (tmp_path / ".out.zarr.lock").exists()


# --- 8: killed between a block's chunk writes and its done-marker, and inside a write ------

KILLER = textwrap.dedent('''
    """Run one image in-process and SIGKILL this process at an exact point of one block."""
    import os, signal, sys, uuid
    from pathlib import Path

    from distributed import Client, LocalCluster

    import unet_tiles.writer as writer
    from unet_tiles.run import SegmentRequest, execute, prepare, validate

    mode, inp, out, model, target, kind = sys.argv[1:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "before-done":
        real = writer.write_block

        class DieOnDone:
            def __setitem__(self, key, value):
                die()

        def write_block(output, block, result, dims):
            if block.id == target:  # all data chunks written, then killed before the marker
                output = writer.OpenOutput(output.labels, output.probabilities, DieOnDone())
            return real(output, block, result, dims)

        writer.write_block = write_block
    else:  # "inside-write": half of a chunk's bytes reach zarr's temporary file
        import zarr.storage._local as local

        real_put = local._put
        row, col = (int(i) for i in target.split("."))
        victim = f"labels/c/{row}/{col}"

        def _put(path, value, exclusive=False):
            if str(path).endswith(victim):
                data = bytes(value.as_buffer_like())
                tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()
            return real_put(path, value, exclusive)

        local._put = _put

    run = validate(SegmentRequest(inp, out, model, output_kind=kind, block_size=64))
    prepare(run)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        execute(run, client, progress=False)
    sys.exit(3)  # the kill never came
''')


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "kind"), [("before-done", "both"),
                                            ("inside-write", "labels")])
def test_killed_inside_a_block_is_redone(mode: str, kind: str, tmp_path: Path, model: Path,
                                         client: Any, spawn: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "img.zarr")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model, "--output", kind)
    out = str(tmp_path / "out.zarr")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    target = "2.3"
    proc = spawn([sys.executable, str(script), mode, inp, out, str(model), target, kind])
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    done = done_grid(out)
    assert done is not None
    assert not done[2, 3], "a half-written block was marked done"
    assert done.sum() > 0
    partial = list(Path(out).rglob("*.partial"))
    if mode == "inside-write":
        assert partial, "the kill inside a chunk write should leave zarr's temporary file"
        assert not (Path(out) / "labels" / "c" / "2" / "3").exists()
    else:  # the data chunks are there, the marker is not
        assert (Path(out) / "labels" / "c" / "2" / "3").exists()

    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, "--output", kind))
    assert status == 0, stderr
    _computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    assert skipped == int(done.sum())
    assert not list(Path(out).rglob("*.partial")), "a temporary file survived the resume"
    assert_identical(out, ref)


# --- 3 and 9: a corrupt or missing input chunk -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_bad_input_chunk_fails_only_its_blocks_then_resumes(
        damage: str, tmp_path: Path, model: Path, client: Any,
        spawn: Callable[..., Any]) -> None:
    import zarr

    inp = make_image(tmp_path / "img.zarr")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model)
    out = str(tmp_path / "out.zarr")
    chunk_file = Path(inp) / "c" / "1" / "2"
    backup = tmp_path / "chunk-backup"
    shutil.copy2(chunk_file, backup)
    if damage == "corrupt":  # truncated, as by an interrupted copy or a bad sector
        data = chunk_file.read_bytes()
        chunk_file.write_bytes(data[: len(data) // 2])
    else:  # a store still being copied: the chunk is not there yet
        chunk_file.unlink()
    expected_failed = blocks_reading_chunk(inp, model, (1, 2))
    assert 1 < len(expected_failed) < 20

    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 1, stderr
    # The workers log each failed task; the run's verdict is one line of its own.
    lines = [line for line in stderr.splitlines() if line.startswith("unet-tiles")]
    assert len(lines) == 1, stderr
    message = lines[0]
    assert f"{len(expected_failed)} of 20 blocks failed" in message
    assert re.search(r"block \d\.\d \(y=\d+:\d+, x=\d+:\d+\)", message), message
    if damage == "corrupt":
        assert "input unreadable" in message
    else:  # 9: names the chunk, never read as background
        assert "input incomplete" in message
        assert "c/1/2" in message
    done = done_grid(out)
    assert done is not None
    assert {tuple(int(i) for i in ix) for ix in zip(*np.nonzero(~done), strict=True)} == (
        expected_failed)
    # The failed blocks wrote nothing: no label chunk holds "background" for them.
    for index in expected_failed:
        assert not (Path(out) / "labels" / "c" / str(index[0]) / str(index[1])).exists()
    labels = zarr.open_array(out, path="labels", mode="r")
    assert labels.nchunks_initialized == 20 - len(expected_failed)

    # Repair: corrupt -> restored from backup as rsync -a would (mtime kept);
    # missing -> the copy finishes now (a new mtime).
    if damage == "corrupt":
        shutil.copy2(backup, chunk_file)
    else:
        shutil.copyfile(backup, chunk_file)
    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 0, stderr
    computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    assert (computed, skipped) == (len(expected_failed), 20 - len(expected_failed))
    if damage == "corrupt":
        assert_identical(out, ref)
    else:  # the input's fingerprint now holds the new mtime; the pixels are the same
        for name in ("labels", "done"):
            np.testing.assert_array_equal(zarr.open_array(out, path=name, mode="r")[...],
                                          zarr.open_array(ref, path=name, mode="r")[...])


def test_changed_chunk_under_a_done_block_is_refused(tmp_path: Path, model: Path,
                                                     client: Any) -> None:
    """The repaired-input rule never resumes over a block whose input changed."""
    from unet_tiles.errors import OutputConflictError
    from unet_tiles.run import SegmentRequest, prepare, validate

    inp = make_image(tmp_path / "img.zarr", shape=(128, 128))
    out = reference(client, inp, str(tmp_path / "out.zarr"), model)
    import zarr

    group = zarr.open_group(out, mode="r+")
    group.attrs["unet_tiles"] = {**group.attrs["unet_tiles"], "status": "running"}
    time.sleep(0.05)
    chunk = Path(inp) / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes())  # same bytes, but written after the blocks
    with pytest.raises(OutputConflictError, match="different input content"):
        prepare(validate(SegmentRequest(inp, out, str(model), block_size=int(BLOCK))))


# --- 4: transient read/write errors ------------------------------------------------------


def test_with_retries_backs_off_then_gives_up_and_never_retries_deterministic_errors(
) -> None:
    import errno

    from unet_tiles.errors import InputIncompleteError
    from unet_tiles.faults import DiskFullError, with_retries

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow store")
        return "ok"

    assert with_retries(flaky, "reading block 0.0", "img.zarr", backoff_s=0.001) == "ok"
    assert len(calls) == 3

    def always(exc: BaseException) -> Callable[[], None]:
        def action() -> None:
            calls.append(1)
            raise exc
        return action

    for exc, attempts in ((OSError(errno.EIO, "io"), 4),
                          (InputIncompleteError("input incomplete: chunk c/0/0"), 1),
                          (PermissionError(errno.EACCES, "denied"), 1)):
        calls.clear()
        with pytest.raises(type(exc)):
            with_retries(always(exc), "reading block 0.0", "img.zarr", attempts=4,
                         backoff_s=0.001)
        assert len(calls) == attempts, exc
    calls.clear()
    with pytest.raises(DiskFullError, match=r"no space left .* writing block 1\.2 .* free space"):
        with_retries(always(OSError(errno.ENOSPC, "full")), "writing block 1.2", "out.zarr",
                     backoff_s=0.001)
    assert len(calls) == 1


@pytest.mark.slow
def test_transient_io_errors_are_retried_and_the_output_is_correct(
        tmp_path: Path, model: Path) -> None:
    import faultfs
    from distributed import Client, LocalCluster

    from unet_tiles.run import SegmentRequest, execute, prepare, validate

    inp = make_image(tmp_path / "img.zarr")
    url = f"{faultfs.PROTOCOL}://{inp}"

    def run(out: Path, client: Any) -> None:
        r = validate(SegmentRequest(url, f"{faultfs.PROTOCOL}://{out}", str(model),
                                    output_kind="both", block_size=int(BLOCK)))
        prepare(r)
        execute(r, client, progress=False)

    # In-process workers share the armed faults with this test.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        run(tmp_path / "ref.zarr", client)
        faultfs.reset()
        faultfs.arm(read=r"img\.zarr/c/1/1$", times=2)
        faultfs.arm(read=r"img\.zarr/c/3/4$", times=1, error=TimeoutError)
        faultfs.arm(write=r"out\.zarr/labels/c/2/3$", times=2)
        faultfs.arm(write=r"out\.zarr/probabilities/c/0/1/1$", times=1)
        faultfs.arm(write=r"out\.zarr/done/c/0/0$", times=1)
        try:
            run(tmp_path / "out.zarr", client)
        finally:
            injected = faultfs.reset()
    assert len(injected) == 7, injected
    assert_identical(tmp_path / "out.zarr", tmp_path / "ref.zarr")


# --- 5: the output disk fills up ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(disk)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_disk_full_is_clear_marks_nothing_and_resumes(
        tmp_path: Path, model: Path, client: Any, small_disk: Path,
        spawn: Callable[..., Any]) -> None:
    import zarr

    inp = make_image(tmp_path / "img.zarr")
    extra = ("--output", "both", "--dtype", "float32")
    from unet_tiles.run import SegmentRequest, execute, prepare, validate

    ref = str(tmp_path / "ref.zarr")
    r = validate(SegmentRequest(inp, ref, str(model), output_kind="both", dtype="float32",
                                block_size=int(BLOCK)))
    prepare(r)
    execute(r, client, progress=False)
    out = str(small_disk / "out.zarr")

    status, _stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, *extra))
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "no space left on the output disk" in message, message
    assert re.search(r"block \d\.\d \(y=\d+:\d+, x=\d+:\d+\)", message), message
    assert "free space" in message
    assert "rerun the same command" in message
    done = done_grid(out)
    assert done is not None
    assert 0 < done.sum() < done.size
    # Everything marked done is complete and correct; no temporary file is left.
    for name in ("labels", "probabilities"):
        got, want = zarr.open_array(out, path=name, mode="r"), zarr.open_array(ref, path=name)
        for index in zip(*np.nonzero(done), strict=True):
            sl = tuple(slice(i * CHUNK, (i + 1) * CHUNK) for i in index)
            sl = sl if name == "labels" else (slice(None), *sl)
            np.testing.assert_array_equal(got[sl], want[sl])
    assert not list(Path(out).rglob("*.partial"))

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, *extra))
    assert status == 0, stderr
    _computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    assert skipped == int(done.sum())
    assert_identical(out, ref)


# --- 6: two runs on one output --------------------------------------------------------------


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    import json

    from unet_tiles.errors import OutputConflictError
    from unet_tiles.lock import RunLock, lock_path

    out = str(tmp_path / "out.zarr")
    # A crashed run's leftover lock file (a dead pid, no flock held) never blocks.
    path = lock_path(out)
    assert path == tmp_path / ".out.zarr.lock"
    path.write_text(json.dumps({"pid": 999_999_999, "host": "gone", "started": "yesterday"}))
    with RunLock(out):
        holder = subprocess.run(
            [sys.executable, "-c", "from unet_tiles.lock import RunLock; import sys; "
             f"RunLock({out!r}).acquire()"], capture_output=True, text=True, check=False)
        assert holder.returncode == 1
        assert "is being written by another unet-tiles run" in holder.stderr
        assert f"pid {os.getpid()}" in holder.stderr
        with pytest.raises(OutputConflictError, match="another unet-tiles run"):
            RunLock(out).acquire()
    assert not path.exists()
    with RunLock(out):  # free again
        pass


@pytest.mark.slow
def test_second_run_refuses_while_first_runs_then_takes_over_after_a_crash(
        tmp_path: Path, model: Path, client: Any, spawn: Callable[..., Any]) -> None:
    # Many blocks, so the first run is still busy when the second has started.
    inp = make_image(tmp_path / "img.zarr", shape=(768, 768))
    out = str(tmp_path / "out.zarr")
    first = spawn(segment_argv(inp, out, model))
    wait_for_done(out, first, at_least=1)

    status, _stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 2, stderr
    assert stderr.count("\n") == 1, stderr
    assert "is being written by another unet-tiles run" in stderr
    assert f"pid {first.pid}" in stderr

    kill_group(first)  # crashed: its lock file is left behind, its flock is gone
    assert (tmp_path / ".out.zarr.lock").exists()
    status, _stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 0, stderr
    assert done_grid(out).all()  # type: ignore[union-attr]
    assert not (tmp_path / ".out.zarr.lock").exists()


# --- a cluster of our own: scheduler and worker processes on 127.0.0.1 ------------------------


@pytest.fixture
def external_cluster(tmp_path: Path, spawn: Callable[..., Any]
                     ) -> Callable[..., tuple[str, Any]]:
    """Start ``dask scheduler`` + ``dask worker`` processes; return (address, client)."""
    import json

    from distributed import Client

    clients: list[Any] = []

    def start(nworkers: int = 2, memory_limit: str = "0",
              env: dict[str, str] | None = None) -> tuple[str, Any]:
        sched_file = tmp_path / "scheduler.json"
        environ = {**os.environ, **(env or {})}
        bindir = Path(sys.executable).parent
        spawn([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
               "--no-dashboard", "--scheduler-file", str(sched_file)], env=environ)
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        spawn([str(bindir / "dask"), "worker", address, "--nworkers", str(nworkers),
               "--nthreads", "1", "--memory-limit", memory_limit, "--host", "127.0.0.1",
               "--no-dashboard"], env=environ)
        client = Client(address, timeout="30s")
        clients.append(client)
        client.wait_for_workers(nworkers, timeout=60)
        return address, client

    yield start  # type: ignore[misc]
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


# --- 1: a worker process is SIGKILLed mid-run ------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_run_output_identical(tmp_path: Path, model: Path, client: Any,
                                                spawn: Callable[..., Any],
                                                external_cluster: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "img.zarr")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model)
    out = str(tmp_path / "out.zarr")
    address, cluster_client = external_cluster(nworkers=2)
    pids = cluster_client.run(os.getpid)
    proc = spawn(segment_argv(inp, out, model, "--cluster", address))
    wait_for_done(out, proc, at_least=3)
    victim = next(iter(pids.values()))
    os.kill(victim, signal.SIGKILL)  # the nanny restarts it; its task runs elsewhere
    _stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    done = done_grid(out)
    assert done is not None
    assert done.all()
    assert victim not in cluster_client.run(os.getpid).values()
    assert_identical(out, ref)


# --- 7: a worker runs out of memory on an oversized block ------------------------------------


@pytest.mark.slow
def test_worker_out_of_memory_says_which_block_size_fits(
        tmp_path: Path, model: Path, spawn: Callable[..., Any],
        external_cluster: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "big.zarr", shape=(2048, 2048))
    # One retry after the first death (dask's default allows 3): no restart loop.
    address, _client = external_cluster(
        nworkers=1, memory_limit="400MB",
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    argv = [sys.executable, "-m", "unet_tiles.cli", "segment", inp, str(tmp_path / "out.zarr"),
            "--model", str(model), "--block-size", "2048", "--output", "both", "--dtype",
            "float32", "--no-progress", "--cluster", address]
    started = time.monotonic()
    status, _stdout, stderr = run_cli(spawn, argv)
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "2 workers died while running block 0.0 (y=0:2048, x=0:2048)" in message, message
    assert "out of memory with blocks of 2048 px" in message
    match = re.search(r"rerun with --block-size (\d+) --overwrite, which should fit", message)
    assert match, message
    assert time.monotonic() - started < 150
    # The advice holds: the same worker finishes the image with the suggested size.
    status, _stdout, stderr = run_cli(spawn, [*argv[:-7], "--block-size", match.group(1),
                                             "--output", "both", "--dtype", "float32",
                                             "--no-progress", "--cluster", address,
                                             "--overwrite"])
    assert status == 0, stderr
    assert done_grid(str(tmp_path / "out.zarr")).all()  # type: ignore[union-attr]

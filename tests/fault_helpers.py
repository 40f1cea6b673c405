"""What the fault-injection tests (``test_fault_*.py``, ``test_repair.py``) share.

Every end-to-end fault test compares its result with an uninterrupted run of
the same image (``reference``) made on the shared session cluster;
"byte-identical" (``assert_identical``) means every file under the two output
stores has the same bytes (nothing excluded).

The fixtures here (``spawn``, ``model``, ``external_cluster``) are defined
under those names; a module that uses them imports their functions::

    from fault_helpers import model_fixture, spawn_fixture  # noqa: F401
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SHAPE = (256, 320)
CHUNK = 64
BLOCK = "64"
SUMMARY = re.compile(r"in (\d+) blocks \((\d+) already done\)")


# --- images, reference runs and output stores ------------------------------------------------


def make_image(path: Path, shape: tuple[int, int] = SHAPE, seed: int = 0) -> str:
    import zarr

    rng = np.random.default_rng(seed)
    array = zarr.create_array(str(path), shape=shape, chunks=(CHUNK, CHUNK), dtype="uint8")
    array[...] = rng.integers(0, 255, shape, dtype=np.uint8)
    return str(path)


def reference(client: Any, inp: str, out: str, model: Path, *extra: str) -> str:
    """An uninterrupted run of ``inp`` into ``out`` with the CLI's parameters."""
    from unet_tiles.engine.run import SegmentRequest, validate

    kind = extra[extra.index("--output") + 1] if "--output" in extra else "labels"
    run = validate(SegmentRequest(inp, out, str(model), output_kind=kind,
                                  block_size=int(BLOCK)))
    run.segment(client, progress=False)
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


def blocks_reading_chunk(inp: str, model: Path, chunk: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Indices of the blocks whose read window touches input chunk ``chunk``."""
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.window import input_region

    run = validate(SegmentRequest(inp, inp + "-probe.zarr", str(model), block_size=int(BLOCK)))
    hit = set()
    for block in run.plan:
        region, _ = input_region(run.source, block)
        if all(s.start // CHUNK <= c < -(-s.stop // CHUNK) for s, c in zip(region, chunk,
                                                                         strict=True)):
            hit.add(block.index)
    return hit


# --- the CLI in subprocesses ---------------------------------------------------------------


def segment_argv(inp: str, out: str, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unet_tiles.cli", "segment", inp, out, "--model", str(model),
            "--block-size", BLOCK, "--no-progress", "--workers", "2", *extra]


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


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(name="spawn")
def spawn_fixture() -> Iterator[Callable[..., subprocess.Popen[str]]]:
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


@pytest.fixture(name="model")
def model_fixture(make_model: Callable[..., Path]) -> Path:
    return make_model(classes=2)


@pytest.fixture(name="external_cluster")
def external_cluster_fixture(tmp_path: Path, spawn: Callable[..., Any]
                             ) -> Iterator[Callable[..., tuple[str, Any]]]:
    """A cluster of our own: ``dask scheduler`` + ``dask worker`` processes on
    127.0.0.1; call it to start one and get (address, client)."""
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

    yield start
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()

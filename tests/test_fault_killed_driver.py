"""Fault 2: the driver (the CLI process and its local cluster) is SIGKILLed mid-run.

Every block marked done is fully written; the rerun redoes only the blocks in
flight or never started, and the output is byte-identical to an uninterrupted
run, with no temporary file and no lock file left.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fault_helpers import (  # noqa: F401
    CHUNK,
    SUMMARY,
    assert_identical,
    done_grid,
    external_cluster_fixture,
    kill_group,
    make_image,
    model_fixture,
    reference,
    run_cli,
    segment_argv,
    spawn_fixture,
    wait_for_done,
)

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.cluster]


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


@pytest.mark.slow
def test_driver_killed_with_instances_resumes_byte_identical(
        tmp_path: Path, model: Path, client: Any, spawn: Callable[..., Any]) -> None:
    # The block pass keeps each block's provisional ids and sums; the rerun redoes the
    # unfinished blocks, then the passes over faces, merge and relabel: the same bytes.
    inp = make_image(tmp_path / "img.zarr")
    extra = ("--output", "labels,instances")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model, *extra)
    out = str(tmp_path / "out.zarr")
    proc = spawn(segment_argv(inp, out, model, *extra))
    wait_for_done(out, proc, at_least=3)
    kill_group(proc)
    done = done_grid(out)
    assert done is not None
    assert done.sum() < done.size, "kill came too late to test anything"
    assert (Path(out) / "_instances" / "provisional").exists()
    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, *extra))
    assert status == 0, stderr
    assert "objects" in stdout
    assert_identical(out, ref)
    assert not (Path(out) / "_instances").exists()


@pytest.mark.slow
def test_driver_killed_leaves_no_warm_up_on_a_cluster_that_outlives_it(
        tmp_path: Path, model: Path, spawn: Callable[..., Any],
        external_cluster: Callable[..., tuple[str, Any]]) -> None:
    # The run registers a worker plugin that warms each joining worker, and unregisters
    # it in a ``finally`` that a SIGKILLed driver never reaches: the scheduler drops it
    # itself when the driver's client leaves, so later workers do not load a dead
    # run's model.
    address, client = external_cluster(nworkers=1)

    def run_plugins() -> list[str]:
        def names(dask_scheduler: Any) -> list[str]:
            return [*dask_scheduler.worker_plugins, *dask_scheduler.plugins]

        return [name for name in client.run_on_scheduler(names)
                if name.startswith("unet-tiles-warm-up-")]

    inp = make_image(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    proc = spawn(segment_argv(inp, out, model, "--cluster", address))
    deadline = time.monotonic() + 120
    while len(run_plugins()) < 2:  # the warm-up and the plugin that forgets it
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run registered no warm-up"
        time.sleep(0.05)
    kill_group(proc)
    done = done_grid(out)
    assert done is None or done.sum() < done.size, "kill came too late to test anything"
    deadline = time.monotonic() + 30
    while run_plugins():
        assert time.monotonic() < deadline, f"left on the scheduler: {run_plugins()}"
        time.sleep(0.1)

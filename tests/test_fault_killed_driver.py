"""Fault 2: the driver (the CLI process and its local cluster) is SIGKILLed mid-run.

Every block marked done is fully written; the rerun redoes only the blocks in
flight or never started, and the output is byte-identical to an uninterrupted
run, with no temporary file and no lock file left.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fault_helpers import (  # noqa: F401
    CHUNK,
    SUMMARY,
    assert_identical,
    done_grid,
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

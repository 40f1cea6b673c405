"""Fault 7c: every worker is paused by dask's memory monitor, none running a block.

A dask worker starts no task while its memory is above its pause fraction, and
unet-tiles' blocks leave it nothing to spill that would bring it down: on a cluster
that keeps pausing on (anyone's own ``dask worker``), the run would wait for ever.
Here the worker pauses above 5 % of 2 GB, which torch and the model alone exceed
after the warm-up: the run ends with one line saying so and what to do.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (  # noqa: F401
    done_grid,
    external_cluster_fixture,
    make_image,
    model_fixture,
    run_cli,
    spawn_fixture,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = [pytest.mark.cluster]


@pytest.mark.slow
def test_all_workers_paused_ends_the_run_with_the_reason(
        tmp_path: Path, model: Path, spawn: Callable[..., Any],
        external_cluster: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "img.zarr", shape=(1024, 1024))
    address, _client = external_cluster(
        nworkers=1, memory_limit="2GB",
        env={"DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "0.05"})
    out = str(tmp_path / "out.zarr")
    argv = [sys.executable, "-m", "unet_tiles.cli", "segment", inp, out, "--model",
            str(model), "--block-size", "512", "--no-progress", "--cluster", address]
    started = time.monotonic()
    status, _stdout, stderr = run_cli(spawn, argv, timeout=120)
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "all workers (1) are paused by dask's memory monitor" in message, message
    assert "set distributed.worker.memory.pause: false" in message, message
    assert time.monotonic() - started < 90
    # Nothing ran: the output is there to resume, none of its blocks marked done.
    grid = done_grid(out)
    assert grid is not None
    assert not grid.any()

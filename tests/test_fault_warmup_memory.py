"""Fault 7b: a worker runs out of memory in its warm-up pass, before any block.

The warm-up runs one batch of the plan's tile on each worker. A tile too large for the
worker's memory limit kills the worker there; the run must then go on to the blocks and
fail on the first one with the same one-line advice as an oversized block, not hang on
the warm-up.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (  # noqa: F401
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
def test_worker_killed_in_warm_up_reports_the_block_size_that_fits(
        tmp_path: Path, model: Path, spawn: Callable[..., Any],
        external_cluster: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "big.zarr", shape=(4096, 4096))
    address, _client = external_cluster(
        nworkers=1, memory_limit="400MB",
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    argv = [sys.executable, "-m", "unet_tiles.cli", "segment", inp, str(tmp_path / "out.zarr"),
            "--model", str(model), "--block-size", "4096", "--tile-size", "4096",
            "--batch-size", "1", "--output", "both", "--dtype", "float32", "--no-progress",
            "--cluster", address]
    started = time.monotonic()
    status, _stdout, stderr = run_cli(spawn, argv, timeout=200)
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "block 0.0 (y=0:4096, x=0:4096)" in message, message
    assert "rerun with --block-size" in message, message
    assert time.monotonic() - started < 150

"""Fault 7: a worker runs out of memory on an oversized block, or in its warm-up.

A single worker with a 400 MB memory limit is given 4096 px blocks of 512 px tiles
(its warm-up pass, one tile, fits well within the limit; the block does not): the nanny
kills it, dask retries once, and the run stops (no restart loop) with one line
naming the block and a block size that should fit, counting the one tile at a time a
CPU worker holds; the same worker then finishes the image with that size.

A tile too large for the limit kills the worker already in its warm-up pass (one
batch of the plan's tile before the first block): the run goes on to the blocks and
ends with the same line, not with the warm-up broadcast's traceback.
"""

from __future__ import annotations

import re
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


def _one_small_worker(tmp_path: Path, model: Path, external_cluster: Callable[..., Any],
                      tile: int) -> list[str]:
    """The segment command for a 4096 px image in one 4096 px block of ``tile`` px tiles,
    on one worker with a 400 MB limit that dask retries once after its first death
    (its default allows 3): no restart loop. Its pausing is off, as on the clusters
    unet-tiles starts: torch and the model take about 300 MB of it, near dask's 80 %
    pause before any block (the advice counts a pause where there is one,
    tests/test_faults.py)."""
    inp = make_image(tmp_path / "big.zarr", shape=(4096, 4096))
    address, _client = external_cluster(
        nworkers=1, memory_limit="400MB",
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
             "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False"})
    return [sys.executable, "-m", "unet_tiles.cli", "segment", inp, str(tmp_path / "out.zarr"),
            "--model", str(model), "--block-size", "4096", "--output", "both", "--dtype",
            "float32", "--no-progress", "--cluster", address, "--tile-size", str(tile)]


@pytest.mark.slow
def test_worker_out_of_memory_says_which_block_size_fits(
        tmp_path: Path, model: Path, spawn: Callable[..., Any],
        external_cluster: Callable[..., Any]) -> None:
    argv = _one_small_worker(tmp_path, model, external_cluster, 512)
    started = time.monotonic()
    status, _stdout, stderr = run_cli(spawn, argv)
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "2 workers died while running block 0.0 (y=0:4096, x=0:4096)" in message, message
    assert "out of memory with blocks of 4096 px" in message
    match = re.search(r"rerun with --block-size (\d+) --overwrite, which should fit", message)
    assert match, message
    # One 512 px tile at a time, as a CPU worker runs them: not the 128 px blocks
    # an estimate of eight tiles per batch gave.
    assert match.group(1) == "512", message
    assert time.monotonic() - started < 150
    # The advice holds: the same worker finishes the image with the suggested size.
    # (The last --block-size given counts.)
    status, _stdout, stderr = run_cli(spawn, [*argv, "--block-size", match.group(1),
                                             "--overwrite"])
    assert status == 0, stderr
    assert done_grid(str(tmp_path / "out.zarr")).all()  # type: ignore[union-attr]


@pytest.mark.slow
def test_worker_killed_in_its_warm_up_gets_the_same_advice(
        tmp_path: Path, model: Path, spawn: Callable[..., Any],
        external_cluster: Callable[..., Any]) -> None:
    argv = [*_one_small_worker(tmp_path, model, external_cluster, 4096), "--batch-size", "1"]
    started = time.monotonic()
    status, _stdout, stderr = run_cli(spawn, argv, timeout=200)
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "died while running block 0.0 (y=0:4096, x=0:4096)" in message, message
    assert "rerun with --block-size" in message, message
    assert "warming worker" in stderr  # the warm-up's death, logged
    assert time.monotonic() - started < 150

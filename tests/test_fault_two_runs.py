"""Fault 6: two runs on one output.

While a first run writes an output, a second one on the same output refuses
at once (exit 2, one line naming the first run's pid); once the first run has
crashed (SIGKILL, its lock file left behind) the next run takes over and
finishes. The lock itself (``engine/lock.py``) is unit-tested in test_lock.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (  # noqa: F401
    done_grid,
    kill_group,
    make_image,
    model_fixture,
    run_cli,
    segment_argv,
    spawn_fixture,
    wait_for_done,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = [pytest.mark.cluster]


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

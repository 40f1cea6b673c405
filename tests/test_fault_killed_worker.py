"""Fault 1: a worker process is SIGKILLed mid-run.

The nanny restarts the worker and dask reruns its task elsewhere; the run
finishes with an output byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (  # noqa: F401
    assert_identical,
    done_grid,
    external_cluster_fixture,
    make_image,
    model_fixture,
    reference,
    segment_argv,
    spawn_fixture,
    wait_for_done,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = [pytest.mark.cluster]


def _worker_pids(client: Any, workers: int) -> set[int]:
    """The workers' pids once all of them answer: the run can finish while the nanny
    is still restarting the killed worker, whose closed comm then fails a broadcast."""
    deadline = time.monotonic() + 60
    while True:
        try:
            client.wait_for_workers(workers, timeout=60)
            return set(client.run(os.getpid).values())
        except OSError:  # distributed's CommClosedError
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


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
    assert victim not in _worker_pids(cluster_client, 2)
    assert_identical(out, ref)

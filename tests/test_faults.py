"""Unit tests of ``unet_tiles/engine/faults.py``: what a block task does about a fault.

Transient I/O is retried with backoff, deterministic errors never; a full disk
becomes ``DiskFullError``; a worker killed again and again becomes a message
with a block size that should fit. The end-to-end fault tests are the
``test_fault_*.py`` modules (one per fault).
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import pytest

from unet_tiles.engine import faults
from unet_tiles.engine.faults import (
    estimate_block_bytes,
    fitting_block_size,
    is_killed_worker,
    is_transient,
    killed_worker_message,
    memory_hint,
    suggest_block_size,
    with_retries,
    worker_memory_limit,
    worker_pause_fraction,
)
from unet_tiles.errors import (
    DiskFullError,
    InputError,
    InputIncompleteError,
    RunFailedError,
    spell_parameters,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# The tests' 2D model (depth 2, 4 base channels, 2 classes: halo 20, pooling grid 4)
# with the default 2D tile and one tile per batch, as memory_hint passes them.
GEOMETRY: dict[str, Any] = {"dims": 2, "in_channels": 1, "classes": 2, "halo": 20,
                            "tile_px": 1024, "batch_size": 1, "base_channels": 4}


def _estimate_args(**changes: Any) -> dict[str, Any]:
    return {**GEOMETRY, **changes}


def test_with_retries_backs_off_then_gives_up_and_never_retries_deterministic_errors(
) -> None:
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


@pytest.mark.parametrize("exc", [
    TimeoutError("slow store"),
    OSError(errno.EIO, "input/output error"),
    ConnectionResetError(errno.ECONNRESET, "connection reset"),
    OSError(errno.EAGAIN, "try again"),
])
def test_is_transient_for_errors_a_wait_can_cure(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "no space left"),
    OSError(errno.EDQUOT, "quota exceeded"),
    OSError(errno.EROFS, "read-only file system"),
    PermissionError(errno.EACCES, "permission denied"),
    PermissionError(errno.EPERM, "operation not permitted"),
    FileNotFoundError(errno.ENOENT, "no such file"),
    IsADirectoryError(errno.EISDIR, "is a directory"),
    NotADirectoryError(errno.ENOTDIR, "not a directory"),
    OSError(errno.ENAMETOOLONG, "file name too long"),
    InputIncompleteError("input incomplete: chunk c/0/0"),
    InputError("input unreadable"),
    ValueError("codec error"),
])
def test_is_transient_never_for_errors_no_wait_cures(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_with_retries_waits_longer_each_time_up_to_a_cap_and_logs_each_retry(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    delays: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", delays.append)
    failure = OSError(errno.EIO, "io")

    def action() -> None:
        raise failure

    with caplog.at_level(logging.WARNING, logger="unet_tiles.engine.faults"), \
            pytest.raises(OSError, match="io") as raised:
        with_retries(action, "reading block 0.1", "img.zarr", attempts=6, backoff_s=1.0)
    assert raised.value is failure  # the last attempt's own error, unchanged
    assert len(delays) == 5  # no wait after the last attempt
    for attempt, delay in enumerate(delays, start=1):
        base = min(faults.MAX_BACKOFF_S, 2.0 ** (attempt - 1))
        assert 0.5 * base <= delay <= 1.5 * base, (attempt, delays)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 5, retries
    assert retries[0].startswith("reading block 0.1 failed (OSError: ")
    assert "retry 1 of 5" in retries[0]
    assert "retry 5 of 5" in retries[-1]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_a_run_failure_naming_the_block(code: int) -> None:
    calls: list[int] = []

    def action() -> None:
        calls.append(1)
        raise OSError(code, "full")

    with pytest.raises(DiskFullError) as raised:
        with_retries(action, "writing block 1.2 (y=64:128, x=128:192)", "out.zarr",
                     backoff_s=0.001)
    assert len(calls) == 1
    assert isinstance(raised.value, RunFailedError)
    message = str(raised.value)
    assert "no space left on the output disk" in message
    assert "writing block 1.2 (y=64:128, x=128:192) of out.zarr" in message
    assert "rerun the same command" in message
    assert "blocks already marked done are kept" in message


def test_is_killed_worker_knows_dask_killed_worker() -> None:
    from distributed.scheduler import KilledWorker

    assert is_killed_worker(KilledWorker("block-0.0-abc", None, 1))  # type: ignore[arg-type]
    assert not is_killed_worker(RuntimeError("KilledWorker"))
    assert not is_killed_worker(MemoryError())


def test_estimate_block_bytes_grows_with_the_block_and_the_model() -> None:
    sizes = [estimate_block_bytes(edge, **_estimate_args()) for edge in (256, 512, 1024, 2048)]
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == len(sizes)
    base = estimate_block_bytes(512, **_estimate_args())
    assert estimate_block_bytes(512, **_estimate_args(classes=5)) > base
    assert estimate_block_bytes(512, **_estimate_args(batch_size=8)) > base
    assert estimate_block_bytes(512, **_estimate_args(base_channels=16)) > base
    assert estimate_block_bytes(512, **_estimate_args(halo=92)) > base
    assert estimate_block_bytes(512, **_estimate_args(dims=3)) > base
    # At least the block's own float32 logits and probabilities.
    assert base >= 512 * 512 * 2 * 4 * 2


def test_suggest_block_size_fits_in_half_of_what_the_worker_has_beyond_its_baseline() -> None:
    limit, baseline = 400 * 10**6, 300 << 20
    size = suggest_block_size(limit, 2048, 4, **GEOMETRY, baseline_bytes=baseline)
    assert size is not None
    assert size % 4 == 0
    assert 4 <= size < 2048
    assert estimate_block_bytes(size, **_estimate_args()) <= (limit - baseline) // 2
    # 2048 px blocks do not fit in that budget (why the worker died).
    assert estimate_block_bytes(2048, **_estimate_args()) > (limit - baseline) // 2
    # More memory never suggests a smaller block.
    larger = suggest_block_size(4 * limit, 2048, 4, **GEOMETRY, baseline_bytes=baseline)
    assert larger is not None
    assert size <= larger < 2048


def test_suggest_block_size_is_none_when_nothing_smaller_fits() -> None:
    # The worker's limit is below its baseline: no block fits.
    assert suggest_block_size(200 << 20, 2048, 4, **GEOMETRY) is None
    # The block is already the smallest the model allows.
    assert suggest_block_size(64 << 30, 4, 4, **GEOMETRY) is None
    # Plenty of memory: whatever is suggested is still below the current size.
    size = suggest_block_size(64 << 30, 2048, 4, **GEOMETRY)
    assert size is not None
    assert size < 2048


def _demo_model_run(tmp_path: Path, make_model: Callable[..., Path]) -> Any:
    """A validated CPU run of the demo model's architecture: a 4096 px image in one block."""
    import numpy as np
    from helpers import write_zarr

    from unet_tiles.engine.run import SegmentRequest, validate

    image = write_zarr(tmp_path / "in.zarr", np.zeros((4096, 4096), "uint8"), (1024, 1024))
    return validate(SegmentRequest(image, str(tmp_path / "out.zarr"),
                                   str(make_model(depth=3, base_channels=8, classes=3)),
                                   block_size=4096, device="cpu"))


def test_the_block_size_advice_counts_the_tiles_a_worker_holds(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    """One tile at a time on CPU (auto_batch), none on a GPU: the advice does not
    shrink the blocks for activations that are not in the worker's memory."""
    from dataclasses import replace

    run = _demo_model_run(tmp_path, make_model)
    assert run.plan.tile_out == 1024  # the demo model's default tile
    two_gb = 2 * 10**9
    on_cpu = fitting_block_size(two_gb, run.plan, run.job)
    assert on_cpu == 2048
    # What the estimate says of that block with the tiles counted: within the budget.
    config = {"dims": 2, "in_channels": 1, "classes": 3, "halo": max(run.plan.halo),
              "tile_px": 1024, "base_channels": 8}
    budget = (two_gb - (300 << 20)) // 2
    assert estimate_block_bytes(2048, **config, batch_size=1) <= budget
    # Eight tiles at once, as the advice once assumed whatever the device, do not fit.
    assert estimate_block_bytes(2048, **config, batch_size=8) > budget
    asked = fitting_block_size(two_gb, run.plan, replace(run.job, batch_size=8))
    assert asked is not None
    assert asked < on_cpu
    on_gpu = fitting_block_size(two_gb, run.plan, replace(run.job, device="cuda",
                                                         batch_size=8))
    assert on_gpu is not None
    assert on_gpu >= on_cpu


def test_the_advice_fits_below_where_the_workers_pause(
        tmp_path: Path, make_model: Callable[..., Path], client: Any) -> None:
    """On a cluster whose workers pause (dask's default, 80 % of the limit), a block
    that fits the limit but not the pause would start no more blocks: the advice
    counts the memory below the pause."""
    import dask
    from distributed import Client, LocalCluster

    assert worker_pause_fraction(client) is None  # unet-tiles' own clusters never pause
    run = _demo_model_run(tmp_path, make_model)
    below_pause = fitting_block_size(10**9, run.plan, run.job)
    assert below_pause is not None
    assert below_pause < fitting_block_size(2 * 10**9, run.plan, run.job)  # type: ignore[operator]
    with dask.config.set({"distributed.worker.memory.pause": 0.5}), LocalCluster(
            n_workers=1, processes=False, memory_limit="2GB", protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as pausing:
        assert worker_pause_fraction(pausing) == 0.5
        message = memory_hint(RuntimeError("killed"), "block 0.0", run.plan, run.job, pausing)
    assert f"`block_size` {below_pause} `overwrite`" in message, message
    assert "(worker memory limit 1.86 GiB)" in message


class FakeClient:
    """What ``worker_memory_limit`` asks of a dask client."""

    def __init__(self, limits: list[int | None], fail: bool = False) -> None:
        self.limits = limits
        self.fail = fail

    def wait_for_workers(self, n: int, timeout: float) -> None:
        if self.fail:
            raise TimeoutError("no worker came back")

    def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
        return {"workers": {f"tcp://127.0.0.1:{4000 + i}": {"memory_limit": v}
                            for i, v in enumerate(self.limits)}}


def test_worker_memory_limit_is_the_smallest_limit_or_none() -> None:
    assert worker_memory_limit(FakeClient([800, 400, 600])) == 400
    assert worker_memory_limit(FakeClient([0, 500, None])) == 500  # 0, None: unlimited
    assert worker_memory_limit(FakeClient([0, None])) is None
    assert worker_memory_limit(FakeClient([])) is None
    # A best-effort hint: a cluster that does not answer gives no limit, no error.
    assert worker_memory_limit(FakeClient([400], fail=True)) is None


def test_killed_worker_message_names_the_block_and_a_size_that_fits() -> None:
    message = killed_worker_message("block 0.0 (y=0:2048, x=0:2048)", 2048, 400 * 10**6, 512, 2)
    assert message.startswith(
        "2 workers died while running block 0.0 (y=0:2048, x=0:2048), most likely out of "
        "memory with blocks of 2048 px; ")
    assert "`block_size` 512" in message
    assert "`overwrite`" in message
    assert "which should fit (worker memory limit 0.37 GiB)" in message
    assert message.endswith("No more blocks were started; blocks already done are kept")
    # Spelled for the command line, the advice is a flag the user can type.
    spelled = spell_parameters(message, lambda name: "--" + name.replace("_", "-"))
    assert "--block-size 512" in spelled
    assert "--overwrite" in spelled
    assert "`" not in spelled


def test_killed_worker_message_without_a_suggestion_or_a_limit() -> None:
    message = killed_worker_message("block 1.0 (y=2048:4096, x=0:2048)", 2048, None, None, None)
    assert message.startswith("workers died while running block 1.0 (y=2048:4096, x=0:2048)")
    assert "give the workers more memory or rerun with a smaller `block_size`" in message
    assert "worker memory limit" not in message
    assert "which should fit" not in message
    limited = killed_worker_message("block 1.0", 2048, 3 * 2**30, None, 4)
    assert limited.startswith("4 workers died while running block 1.0")
    assert ("give the workers more memory (worker memory limit 3.00 GiB): by unet-tiles' "
            "estimate no smaller `block_size` fits in it.") in limited

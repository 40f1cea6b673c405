"""The Prefect tasks both flows are made of: coarse steps, never one per block.

A task costs about 100 ms of orchestration (DESIGN.md), a dask task well under
1 ms, so the per-block work stays plain dask futures inside ``run_blocks``.
Tasks pass requests, paths and small records between them, never pixels.
Nothing here is cached: the output's done-markers already make a rerun resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from unet_tiles.errors import BlockFailedError, UnetTilesError
from unet_tiles.run import PreparedRun, SegmentRequest, execute, prepare, validate

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import TaskRun
    from prefect.states import State

    from unet_tiles.cluster import ClusterInfo

    from .settings import ClusterChoice

def is_transient(exc: BaseException) -> bool:
    """A failure that may pass on its own: network, timeout, flaky storage.

    The engine's own rule (``faults.is_transient``: errno-based, so a full disk
    or a missing file is never retried), minus our errors, which are deterministic.
    """
    from unet_tiles.faults import is_transient as io_transient

    if isinstance(exc, UnetTilesError | BlockFailedError):
        # Bad input, a held lock, or a block that failed after the engine's retries.
        return False
    return isinstance(exc, ConnectionError) or io_transient(exc)


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures only."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


# Transient failures are retried after 2 s, then 4 s, with jitter so that the
# images of one archive run do not retry in lockstep against the same storage.
_RETRY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
    "cache_policy": NO_CACHE,
}


@task(name="validate", cache_policy=NO_CACHE)
def validate_step(request: SegmentRequest) -> PreparedRun:
    """Everything checkable before a byte is written; fails with the CLI's message."""
    return validate(request)


@task(name="prepare-output", **_RETRY)
def prepare_step(run: PreparedRun) -> bool:
    """Create the output, or check it may be resumed; True when resuming."""
    resuming = prepare(run)
    if resuming:
        get_run_logger().info("resuming %s", run.request.output)
    return resuming


@task(name="run-blocks", **_RETRY)
def run_blocks_step(run: PreparedRun, choice: ClusterChoice,
                    progress_key: str | None = None) -> dict[str, Any]:
    """Start or join the dask cluster, run every block not yet done, finalize."""
    from unet_tiles.cluster import connect

    from .report import progress_artifact

    logger = get_run_logger()
    with connect(choice.spec, choice.workers, choice.threads_per_worker) as (client, info):
        logger.info("running %d blocks of %s on %s (%d workers)", len(run.plan),
                    run.request.input, info.kind, info.workers)
        progress = progress_artifact(f"blocks of {run.request.output}", key=progress_key)
        summary = execute(run, client, info, progress=False, on_block=progress)
    return summary.to_dict()


def segment_on(run: PreparedRun, address: str, info: ClusterInfo) -> dict[str, Any]:
    """Prepare and run one image on an existing cluster (the archive's shared one)."""
    from distributed import Client

    from unet_tiles.lock import output_lock

    # The run lock spans prepare to finalize, as in unet_tiles.run.segment: the
    # nightly run and an arrival run never write one output at once.
    with output_lock(run.request.output):
        prepare(run)
        # One client per image: a Client is not shared across the archive's threads.
        with Client(address, set_as_default=False, timeout="30s") as client:
            return execute(run, client, info, progress=False).to_dict()

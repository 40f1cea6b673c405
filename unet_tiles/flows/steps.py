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

from unet_tiles.engine.run import Run, SegmentRequest, validate
from unet_tiles.errors import RunFailedError, UnetTilesError

from .settings import flow_wording

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

    from unet_tiles.engine.cluster import ClusterInfo

    from .settings import ClusterChoice


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass on its own: network, timeout, flaky storage.

    The engine's own rule (``faults.is_transient``: errno-based, so a full disk
    or a missing file is never retried), minus our errors, which are deterministic.
    """
    from unet_tiles.engine.faults import is_transient as io_transient

    if isinstance(exc, UnetTilesError | RunFailedError):
        # Bad input, a held lock, or blocks that failed after the engine's retries.
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
RETRY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
    "cache_policy": NO_CACHE,
}


@task(name="validate", cache_policy=NO_CACHE)
def validate_step(request: SegmentRequest) -> Run:
    """Everything checkable before a byte is written (``Run`` validation)."""
    with flow_wording():
        return validate(request)


@task(name="prepare-output", **RETRY)
def prepare_step(run: Run) -> str:
    """``Run.prepare``: create the output or check it may be resumed; the action taken."""
    with flow_wording():
        decision = run.prepare()
    get_run_logger().info("output %s %s: %s", run.output, decision.reason, decision.action)
    return decision.action


@task(name="run-blocks", **RETRY)
def run_blocks_step(run: Run, choice: ClusterChoice,
                    progress_key: str | None = None) -> dict[str, Any]:
    """``Run.execute`` on the dask cluster started or joined here."""
    from unet_tiles.engine.cluster import connect

    from .report import progress_artifact

    logger = get_run_logger()
    with flow_wording(), connect(choice.spec, choice.workers,
                                 choice.threads_per_worker) as (client, info):
        logger.info("running %d blocks of %s on %s (%d workers)", len(run.plan),
                    run.request.input, info.kind, info.workers)
        progress = progress_artifact(f"blocks of {run.output}", key=progress_key)
        summary = run.execute(client, info, progress=False, on_block=progress)
    return summary.to_dict()


@task(name="finalize", **RETRY)
def finalize_step(run: Run) -> None:
    """``Run.finalize``: mark the output complete."""
    with flow_wording():
        run.finalize()


def segment_on(run: Run, address: str, info: ClusterInfo) -> dict[str, Any]:
    """``Run.segment`` on an existing cluster (the archive's shared one)."""
    from distributed import Client

    # One client per image: a Client is not shared across the archive's threads.
    with flow_wording(), Client(address, set_as_default=False, timeout="30s") as client:
        return run.segment(client, info, progress=False).to_dict()

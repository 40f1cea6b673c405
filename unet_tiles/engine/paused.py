"""End a run that dask's memory monitor has stalled, with the reason.

A dask worker pauses (starts no task) while its process memory is above
``distributed.worker.memory.pause`` of its limit (80 % by default), and resumes when
it drops below, which dask expects to happen as it spills task results to disk.
unet-tiles' tasks keep no results to spill: what fills a worker is its own heap
(torch, the model, the freed maps of its last block, kept for reuse). That does not
drop, so a run whose workers are all paused with no block running would wait for
ever. The clusters unet-tiles starts turn pausing off (``engine/cluster.py``); on
anyone else's cluster this watch ends the run with the reason instead.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from distributed import Client

# Paused with no task running, a worker's memory has nothing to drop it; the wait
# only rides out heartbeats (about a second apart) that still show a block ending.
PAUSED_FOR_S = 10.0
CHECK_EVERY_S = 2.0


def stalled_message(workers: dict[str, dict[str, Any]]) -> str:
    """Why no block can start: the workers, their memory and their limits."""
    address, worker = max(workers.items(), key=lambda kv: kv[1].get("memory_limit") or 0)
    used = (worker.get("metrics") or {}).get("memory", 0) / 2**20
    limit = (worker.get("memory_limit") or 0) / 2**20
    return (
        f"all workers ({len(workers)}) are paused by dask's memory monitor with no block "
        f"running, so no block can start (worker {address} uses {used:.0f} MiB of its "
        f"{limit:.0f} MiB limit; dask pauses a worker above "
        "distributed.worker.memory.pause of it, 80 % by default). Give the workers more "
        "memory, or set distributed.worker.memory.pause: false on them (unet-tiles keeps "
        "no task results for dask to spill, so pausing only waits). No more blocks were "
        "started; blocks already done are kept"
    )


def all_paused_and_idle(workers: dict[str, dict[str, Any]]) -> bool:
    """Every worker paused and none running a task (no worker at all is not a stall:
    a SLURM run waits for its jobs to start)."""
    return bool(workers) and all(
        w.get("status") == "paused"
        and not ((w.get("metrics") or {}).get("task_counts") or {}).get("executing")
        for w in workers.values()
    )


class PausedWorkersWatch:
    """A thread that calls ``on_stall`` once the cluster has been all paused and idle
    for ``paused_for_s``; ``reason`` then says why (``stalled_message``).

    ``on_workers`` is told every check's workers (their ``scheduler_info``): the
    run sizes its blocks in flight by the threads the cluster has now.
    """

    def __init__(self, client: Client, on_stall: Callable[[], None], *,
                 paused_for_s: float = PAUSED_FOR_S,
                 check_every_s: float = CHECK_EVERY_S,
                 on_workers: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> None:
        self._client = client
        self._on_stall = on_stall
        self._on_workers = on_workers
        self._paused_for_s = paused_for_s
        self._check_every_s = check_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="paused-workers-watch",
                                        daemon=True)
        self.reason: str | None = None

    def __enter__(self) -> PausedWorkersWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        since: float | None = None
        while not self._stop.wait(self._check_every_s):
            try:
                workers = self._client.scheduler_info()["workers"]
            except Exception:  # the scheduler is going away: the run sees that itself
                continue
            if self._on_workers is not None:
                self._on_workers(workers)
            if not all_paused_and_idle(workers):
                since = None
                continue
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= self._paused_for_s:
                self.reason = stalled_message(workers)
                self._on_stall()
                return


__all__ = ["PausedWorkersWatch", "all_paused_and_idle", "stalled_message"]

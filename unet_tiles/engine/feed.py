"""Which blocks are in flight, and which block goes next to which worker.

Two blocks per worker thread are kept in flight (one running, one ready to start when
it ends), counted anew as workers come and go: the jobs of a SLURM or Kubernetes
cluster start their workers after the run has begun, often one by one, and a count
taken at the start (none, or the first job's) would leave the rest idle.

A worker that finishes a block is given the block after it in the plan: the two
windows share the chunks along their common edge, which the worker's chunk cache
(``pipeline/chunk_cache.py``) already holds. Each block in flight so walks a stripe
of the plan. Where a stripe runs into blocks taken already, or a block has no worker
to follow (the start, a failure, a worker that joined), the next block starts a new
stripe in the middle of the longest run of blocks nobody has taken, as guided
self-scheduling splits the work left::

    plan order:  [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15]
    4 in flight:  a . . . c . . . b . .  .  d  .  .  .    seeds: 0, 8, 4, 12
    a walks 1 2 3, c 5 6 7, b 9 10 11, d 13 14 15; the first to meet a taken block
    takes the middle of the longest run still untaken.

The follow-on block goes to the worker as a preference (``allow_other_workers``): a
worker that died or left has its blocks run elsewhere, as dask reschedules them.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed import Client

    from unet_tiles.pipeline.plan import Block


class StripeOrder:
    """The order positions ``0 .. n-1`` (blocks in plan order) are taken in: pure."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._taker: list[str | None] = [None] * n
        self._taken = [False] * n
        # Untaken runs [start, end) by start, and a max-heap of them by length (entries
        # of runs split since are skipped when they come up).
        self._runs: dict[int, int] = {0: n} if n else {}
        self._longest: list[tuple[int, int, int]] = [(-n, 0, n)] if n else []

    @property
    def left(self) -> int:
        return sum(end - start for start, end in self._runs.items())

    def seed(self, taker: str | None = None) -> int | None:
        """The middle of the longest untaken run (its start for the plan's first
        block), taken; None when none is left."""
        while self._longest:
            _length, start, end = self._longest[0]
            if self._runs.get(start) != end:
                heapq.heappop(self._longest)
                continue
            middle = start if start == 0 else start + (end - start) // 2
            self._take_in(start, end, middle, taker)
            return middle
        return None

    def first(self) -> int | None:
        """The first untaken block in plan order, taken; None when none is left."""
        if not self._runs:
            return None
        start = min(self._runs)
        self._take_in(start, self._runs[start], start, None)
        return start

    def after(self, position: int, taker: str) -> int | None:
        """The block that follows ``position`` in ``taker``'s stripe, taken: the first
        past the blocks ``taker`` holds already, if nobody else has taken it; else
        None (the stripe has run into another)."""
        q = position + 1
        while q < self._n and self._taken[q] and self._taker[q] == taker:
            q += 1
        if q >= self._n or self._taken[q]:
            return None
        end = self._runs.get(q)
        if end is None:  # q untaken and q - 1 taken: q starts a run
            raise RuntimeError(f"position {q} is untaken but starts no run")
        self._take_in(q, end, q, taker)
        return q

    def _take_in(self, start: int, end: int, position: int, taker: str | None) -> None:
        del self._runs[start]
        for a, b in ((start, position), (position + 1, end)):
            if b > a:
                self._runs[a] = b
                heapq.heappush(self._longest, (a - b, a, b))
        self._taken[position] = True
        self._taker[position] = taker


class BlockFeed:
    """The blocks ``run_plan`` has yet to submit, those in flight, and which worker
    each new one goes to.

    Topped up after every block (the threads counted again at most every
    ``RECOUNT_S``) and whenever the cluster's watch reports more threads, for blocks
    that run longer than that (both threads call ``top_up``). ``follow_workers``
    False hands the blocks out in plan order to whichever worker dask picks (as
    before the stripes; for benchmarks).
    """

    RECOUNT_S = 1.0

    def __init__(self, client: Client, todo: list[Block],
                 submit: Callable[[Block, str | None], Any],
                 max_in_flight: int | None, follow_workers: bool = True) -> None:
        self._client = client
        self._follow = follow_workers
        self._todo = todo
        self._order = StripeOrder(len(todo))
        self._position = {block.index: i for i, block in enumerate(todo)}
        self._submit = submit
        self._fixed = max_in_flight
        self._threads = sum(client.nthreads().values())
        self._counted = time.monotonic()
        self._stopped = False
        self._queue: Any = None
        # Each submitted block and its future, by key; the watch's thread reads it too.
        self._in_flight: dict[str, tuple[Block, Any]] = {}
        self._lock = threading.Lock()

    def target(self) -> int:
        return self._fixed if self._fixed is not None else 2 * max(1, self._threads)

    def start(self, queue: Any) -> None:
        self._queue = queue
        self.top_up()

    def top_up(self, after: Block | None = None, worker: str | None = None) -> None:
        """Submit blocks until ``target`` are in flight (at least one while any is
        left): first the one after ``after``, to the ``worker`` that did it."""
        with self._lock:
            if self._stopped or self._queue is None:
                return
            wanted = max(self.target() - len(self._in_flight), 0 if self._in_flight else 1)
            for _ in range(wanted):
                position = hint = None
                if not self._follow:
                    position = self._order.first()
                else:
                    if after is not None and worker is not None:
                        position = self._order.after(self._position[after.index], worker)
                        hint = worker if position is not None else None
                        after = None
                    if position is None:
                        position = self._order.seed()
                if position is None:
                    return
                block = self._todo[position]
                future = self._submit(block, hint)
                self._in_flight[str(future.key)] = (block, future)
                self._queue.add(future)

    def done(self, future: Any) -> Block:
        """The block of a finished ``future``, no longer in flight."""
        with self._lock:
            block, _future = self._in_flight.pop(str(future.key))
        if self._fixed is None and time.monotonic() - self._counted >= self.RECOUNT_S:
            self._counted = time.monotonic()
            self._threads = sum(self._client.nthreads().values())
        return block

    def stop(self) -> None:
        """Submit no more blocks."""
        with self._lock:
            self._stopped = True

    def workers_now(self, workers: dict[str, dict[str, Any]]) -> None:
        threads = sum(int(w.get("nthreads") or 0) for w in workers.values())
        grew = threads > self._threads
        self._threads = threads
        if grew:
            self.top_up()

    def cancel_in_flight(self) -> None:
        with self._lock:
            futures = [future for _block, future in self._in_flight.values()]
        self._client.cancel(futures)


__all__ = ["BlockFeed", "StripeOrder"]

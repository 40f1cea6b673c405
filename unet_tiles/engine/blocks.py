"""Run a block plan on a dask cluster: one task per block, bounded in flight.

Each task reads its window, predicts, writes its chunks and done-marker, and
returns a few numbers and its worker's address (the next block goes there:
feed.py); no pixels pass through the client or the scheduler.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unet_tiles.engine.faults import with_retries
from unet_tiles.engine.feed import BlockFeed
from unet_tiles.engine.paused import PausedWorkersWatch
from unet_tiles.engine.progress import BlockProgress
from unet_tiles.errors import BlockFailedError, DiskFullError

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed import Client

    from unet_tiles.model.unet import UNet
    from unet_tiles.pipeline.chunk_cache import ChunkCache
    from unet_tiles.pipeline.plan import Block, BlockPlan
    from unet_tiles.pipeline.source import ImageSource
    from unet_tiles.pipeline.writer import OutputSpec

logger = logging.getLogger(__name__)

# Decoded input chunks a worker keeps for the next blocks' windows (pipeline/
# chunk_cache.py), at most this and a sixteenth of its memory limit: a block's
# window reaches into its neighbours' chunks, which were decoded (and on object
# storage fetched) again by every block that touched them. 256 MiB holds the four
# chunk rows a row of 2048 px blocks shares with the next in a 1024 px-chunked
# uint8 image up to 64 kpx wide; in wider ones the left neighbour's still hit.
READ_CACHE_BYTES = 256 << 20


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for any block of one run (small and picklable)."""

    source: ImageSource
    output: OutputSpec
    model_dir: str
    model_hash: str
    batch_size: int | None = None
    device: str = "auto"
    torch_threads: int | None = None
    # The forward passes' dtype (predict.autocast): auto, float32 or bfloat16.
    precision: str = "auto"
    # Tiles and weights channels-last; None: where it measured faster (predict.py).
    channels_last: bool | None = None
    run_id: str = ""
    allow_missing_chunks: bool = False
    # With instances: the plan, whose grid numbers every block's ids (pipeline/instances.py).
    plan: BlockPlan | None = None
    # A tile's input size (the plan's first block's): a GPU worker runs one batch of
    # them before its first block, so kernel selection is not the first block's time.
    warm_tile: tuple[int, ...] | None = None
    # The worker's cache of decoded input chunks (0: none); see READ_CACHE_BYTES.
    read_cache_bytes: int = READ_CACHE_BYTES


@dataclass
class RunSummary:
    pixels: int = 0
    blocks_total: int = 0
    blocks_done: int = 0
    blocks_skipped: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    # The OME layout's pyramid levels, built after the blocks (engine/pyramid.py).
    pyramid_seconds: float = 0.0
    # With instances: the object count and the passes after the blocks' (engine/instances.py).
    objects: int | None = None
    instances_seconds: float = 0.0

    @property
    def megapixels_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixels": self.pixels,
            "blocks_total": self.blocks_total,
            "blocks_done": self.blocks_done,
            "blocks_skipped": self.blocks_skipped,
            "seconds": round(self.seconds, 3),
            "pyramid_seconds": round(self.pyramid_seconds, 3),
            "megapixels_per_s": round(self.megapixels_per_s, 3),
            "failures": self.failures,
            **({} if self.objects is None else {
                "objects": self.objects,
                "instances_seconds": round(self.instances_seconds, 3)}),
        }


def process_block(job: BlockJob, block: Block) -> dict[str, Any]:
    """Read + predict + write + mark done, in one worker task."""
    from unet_tiles.pipeline.predict import pick_device, predict_block
    from unet_tiles.pipeline.window import read_window
    from unet_tiles.pipeline.writer import write_block

    set_torch_threads(job)
    device = pick_device(job.device)
    started = time.perf_counter()
    model, channels_last = job_model(job, device)
    name = block.describe(job.output.axes)
    chunks = _input_chunks(_read_cache_budget(job.read_cache_bytes))
    cache = chunks.scoped(job.run_id) if chunks is not None else None
    # Transient I/O errors are retried with backoff; a full disk says so (faults.py).
    window = with_retries(
        lambda: read_window(_open_input(job.source, job.run_id), job.source, block,
                            job.allow_missing_chunks, cache),
        f"reading {name}", job.source.location)
    spec = job.output
    result = predict_block(
        model, window, block,
        # Instances are made from the classes and weighed by their probabilities.
        want_labels=spec.want_labels or spec.want_instances,
        want_probabilities=spec.want_probabilities or spec.want_instances,
        probability_dtype=spec.probability_dtype,
        batch_size=job.batch_size, device=device, precision=job.precision,
        channels_last=channels_last,
    )
    instances = None
    if spec.want_instances:
        from unet_tiles.engine.instances import label_result

        if job.plan is None or result.labels is None or result.probabilities is None:
            raise RuntimeError("instances need the job's plan, labels and probabilities")
        instances = label_result(spec, job.plan, block, result.labels, result.probabilities)
    with_retries(
        lambda: write_block(_open_output(spec, job.run_id), block, result, instances),
        f"writing {name}", spec.url)
    return {"block": block.index, "pixels": block.write.size,
            "seconds": time.perf_counter() - started, "worker": _worker_address()}


def job_model(job: BlockJob, device: str) -> tuple[UNet, bool]:
    """This worker's model for ``job`` on ``device``, and whether it runs channels-last."""
    from unet_tiles.pipeline.predict import cached_model, channels_last_on

    channels_last = channels_last_on(device, job.channels_last)
    return cached_model(job.model_dir, job.model_hash, device, channels_last), channels_last


def set_torch_threads(job: BlockJob) -> None:
    import torch

    if job.torch_threads and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)


# Opened arrays are kept per worker process for the blocks of one run. The keys
# carry the run id, so a store replaced at the same path (an overwritten output,
# a re-acquired image with other codecs) is opened afresh by the next run, never
# read or written through stale metadata.
@functools.lru_cache(maxsize=8)
def _open_input(source: ImageSource, run_id: str) -> Any:
    del run_id
    return source.open()


@functools.lru_cache(maxsize=8)
def _open_output(spec: OutputSpec, run_id: str) -> Any:
    from unet_tiles.pipeline.writer import open_output

    del run_id
    return open_output(spec)


@functools.lru_cache(maxsize=1)
def _input_chunks(max_bytes: int) -> ChunkCache | None:
    """This worker process's cache of decoded input chunks (None: no cache), shared by
    the runs it serves at once (an archive's images), each under its run id."""
    from unet_tiles.pipeline.chunk_cache import ChunkCache

    return ChunkCache(max_bytes) if max_bytes > 0 else None


def _this_worker() -> Any:
    """The dask worker running this task; None outside one (run_serial, benchmarks)."""
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def _worker_address() -> str | None:
    worker = _this_worker()
    return None if worker is None else str(worker.address)


def _read_cache_budget(asked_bytes: int) -> int:
    """``asked_bytes``, at most a sixteenth of this worker's memory limit, if it has one."""
    worker = _this_worker()
    limit = None if worker is None else worker.memory_manager.memory_limit
    return min(asked_bytes, limit // 16) if limit else asked_bytes


def run_plan(client: Client, plan: BlockPlan, job: BlockJob, *, skip: Any = None,
             max_in_flight: int | None = None, progress: bool | None = None,
             on_block: Callable[[int, int], None] | None = None,
             retries: int = 0, resources: dict[str, float] | None = None,
             follow_workers: bool = True) -> RunSummary:
    """Submit one task per block not yet done, at most ``max_in_flight`` at a time
    (default: two per worker thread the cluster has, as it grows or shrinks), the
    block after a finished one to the worker that has its neighbour's chunks
    (``feed.py``; ``follow_workers`` False: in plan order, to whichever worker).

    Failures do not stop the run: every other block finishes, then
    ``BlockFailedError`` names the failed blocks with their pixel ranges.
    Transient I/O is retried inside the task (``faults.with_retries``) and a
    dead worker's blocks are rescheduled by dask, so task-level ``retries``
    default to 0: rerunning a corrupt chunk's block would fail the same way.
    """
    from distributed import as_completed

    started = time.perf_counter()
    summary = RunSummary(blocks_total=len(plan))
    todo = []
    for block in plan:
        if skip is not None and bool(skip[block.index]):
            summary.blocks_skipped += 1
        else:
            todo.append(block)
    # Blocks, Mpx/s and ETA on a terminal; nothing elsewhere unless progress=True.
    bar = BlockProgress(len(plan), summary.blocks_skipped, enabled=progress)
    token = uuid.uuid4().hex[:12]

    def submit(block: Block, worker: str | None) -> Any:
        # The worker that did the block before: a preference, never a requirement.
        where = {} if worker is None else {"workers": [worker], "allow_other_workers": True}
        return client.submit(process_block, job, block, key=f"block-{block.id}-{token}",
                             pure=False, retries=retries, resources=resources, **where)

    feed = BlockFeed(client, todo, submit, max_in_flight, follow_workers)
    fatal: str | None = None
    # Workers all paused by dask's memory monitor would never start the blocks; the
    # watch also tells the feed how many threads the cluster has now.
    watch = PausedWorkersWatch(client, feed.cancel_in_flight, on_workers=feed.workers_now)
    with watch:
        # as_completed binds to the *default* client's event loop unless told; an
        # archive runs each image on its own, non-default client, and the futures'
        # events must be awaited on that client's loop (dask/distributed#4317).
        queue = as_completed(loop=client.loop)
        feed.start(queue)
        for future in queue:
            block = feed.done(future)
            pixels = 0
            worker = None
            try:
                info = future.result()
                pixels = int(info["pixels"])
                worker = info.get("worker")
                summary.blocks_done += 1
                summary.pixels += pixels
            except Exception as exc:
                summary.failures.append(_failure(block, job, exc))
                # A full disk or a worker killed again and again fails every next
                # block the same way: start no more (faults.py), report the cause once.
                fatal = fatal or watch.reason or _fatal(exc, block, plan, job, client)
            finally:
                future.release()
            bar.update(pixels)
            if on_block is not None:
                on_block(summary.blocks_done + summary.blocks_skipped, summary.blocks_total)
            if fatal:
                feed.stop()
            # The block after this one shares chunks with it: to the worker that has them.
            feed.top_up(block, worker)
    bar.close()
    summary.seconds = time.perf_counter() - started
    if fatal:
        raise BlockFailedError(fatal, summary.failures)
    if summary.failures:
        first = summary.failures[0]
        raise BlockFailedError(
            f"{len(summary.failures)} of {summary.blocks_total} blocks failed; first: "
            f"{first['block']}: {first['error']}. The other blocks are written; fix the "
            "cause and rerun the same command to do only the failed blocks",
            summary.failures,
        )
    return summary


def run_serial(plan: BlockPlan, job: BlockJob, *, skip: Any = None) -> RunSummary:
    """Run every block in this process, in order: for tests and debugging.

    Same worker function as ``run_plan``, no cluster; errors propagate.
    """
    started = time.perf_counter()
    summary = RunSummary(blocks_total=len(plan))
    for block in plan:
        if skip is not None and bool(skip[block.index]):
            summary.blocks_skipped += 1
            continue
        summary.pixels += int(process_block(job, block)["pixels"])
        summary.blocks_done += 1
    summary.seconds = time.perf_counter() - started
    return summary


def _failure(block: Block, job: BlockJob, exc: BaseException) -> dict[str, Any]:
    return {
        "block": block.describe(job.output.axes),
        "index": list(block.index),
        "write": block.write.ranges(job.output.axes),
        "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
    }


def _fatal(exc: BaseException, block: Block, plan: BlockPlan, job: BlockJob,
           client: Client) -> str | None:
    """The run-stopping message for a full disk or a repeatedly killed worker, else None."""
    from unet_tiles.engine.faults import is_killed_worker, memory_hint

    if isinstance(exc, DiskFullError):
        return str(exc)
    if is_killed_worker(exc):
        return memory_hint(exc, block.describe(job.output.axes), plan, job, client)
    return None


__all__ = ["BlockJob", "RunSummary", "process_block", "run_plan", "run_serial"]

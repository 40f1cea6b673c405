"""Transient I/O, a full disk and an exhausted worker: what a block task does about each.

* Transient I/O errors (``OSError``, timeouts) while a block reads its window or
  writes its chunks are retried in the task with exponential backoff and
  jitter, ``IO_ATTEMPTS`` times in all. Reads and writes of a block are
  idempotent (a block owns its chunks), so a retry can never corrupt.
* Deterministic errors are never retried here: ``InputError`` (a missing or
  undecodable chunk) is not an ``OSError``, and neither are codec errors.
  Errors no wait can cure (disk full, read-only, permission, no such file)
  are raised at once.
* A full output disk (``ENOSPC``/``EDQUOT``) becomes ``DiskFullError``, which
  names the block and says to free space and rerun; the engine stops
  submitting blocks after it (every other block would fail the same way).
* A worker that died repeatedly on one block (dask's ``KilledWorker``, most
  often the nanny killing it for exceeding its memory limit) becomes a message
  with a block size estimated to fit that limit, and the engine stops
  submitting, instead of restarting workers block after block.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import TYPE_CHECKING, Any, TypeVar

from unet_tiles.errors import DiskFullError

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

T = TypeVar("T")

IO_ATTEMPTS = 5
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# Waiting cures none of these; retrying would only delay the error.
PERMANENT = DISK_FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                         errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno not in PERMANENT


def with_retries(action: Callable[[], T], what: str, where: str, *,
                 attempts: int = IO_ATTEMPTS, backoff_s: float = BACKOFF_S) -> T:
    """Run ``action``, retrying transient I/O errors with exponential backoff.

    ``what`` says what the action does ("writing block 0.1 (y=0:64, x=64:128)"),
    ``where`` the store it touches, for the messages.
    """
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise DiskFullError(
                    f"no space left on the output disk while {what} of {where}; free space "
                    "there (or choose another output) and rerun the same command: blocks "
                    "already marked done are kept, this one is redone"
                ) from None
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = min(MAX_BACKOFF_S, backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            logger.warning("%s failed (%s: %s); retry %d of %d in %.2f s", what,
                           type(exc).__name__, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def is_killed_worker(exc: BaseException) -> bool:
    return type(exc).__name__ == "KilledWorker"


def estimate_block_bytes(edge_px: int, dims: int, in_channels: int, classes: int,
                         halo: int, tile_px: int, batch_size: int, base_channels: int) -> int:
    """A generous estimate of one block task's peak memory, beyond the worker's baseline.

    The window (float32, with halo), the block's float32 logits and
    probabilities, and one batch of tiles' activations (the first level's
    features dominate; about 6 maps of them are alive at once in forward).
    """
    window = (edge_px + 2 * halo) ** dims * in_channels * 4
    outputs = edge_px**dims * (classes * 4 * 3 + 2)
    tile = min(tile_px, edge_px) + 2 * halo
    activations = batch_size * tile**dims * base_channels * 4 * 6
    return int(window + outputs + activations)


def suggest_block_size(limit_bytes: int, current_px: int, divisor: int, *, dims: int,
                       in_channels: int, classes: int, halo: int, tile_px: int,
                       batch_size: int, base_channels: int,
                       baseline_bytes: int = 300 << 20) -> int | None:
    """The first of ``current_px`` halved, quartered, ... (each rounded down to a
    multiple of ``divisor``) whose estimate fits in half of what the worker has
    beyond its baseline; None if none does."""
    budget = (limit_bytes - baseline_bytes) // 2
    edge = max(divisor, (current_px // 2) // divisor * divisor)
    while edge > divisor and estimate_block_bytes(
        edge, dims, in_channels, classes, halo, tile_px, batch_size, base_channels
    ) > budget:
        edge = max(divisor, (edge // 2) // divisor * divisor)
    fits = estimate_block_bytes(edge, dims, in_channels, classes, halo, tile_px, batch_size,
                                base_channels) <= budget
    return edge if fits and edge < current_px else None


def worker_memory_limit(client: Any) -> int | None:
    """The smallest memory limit among the cluster's workers (None if unlimited)."""
    try:
        # Right after a death the worker may still be restarting: wait for one.
        client.wait_for_workers(1, timeout=30)
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except Exception:  # a best-effort hint must never hide the real error
        return None
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    limits = [v for v in limits if v > 0]
    return min(limits) if limits else None


def killed_worker_message(block_name: str, block_px: int, limit_bytes: int | None,
                          suggestion: int | None, attempts: int | None) -> str:
    tries = f"{attempts} " if attempts else ""
    limit = f" (worker memory limit {limit_bytes / 2**30:.2f} GiB)" if limit_bytes else ""
    if suggestion is not None:
        fix = (f"rerun with `block_size` {suggestion} `overwrite`, which should fit{limit}"
               " (the block size is one of the output's parameters)")
    elif limit_bytes:
        # The estimate found no smaller block within the limit: the model's tiles (their
        # halo) or the worker's own baseline take it.
        fix = (f"give the workers more memory{limit}: by unet-tiles' estimate no smaller "
               "`block_size` fits in it")
    else:
        fix = "give the workers more memory or rerun with a smaller `block_size`"
    return (
        f"{tries}workers died while running {block_name}, most likely out of memory with "
        f"blocks of {block_px} px; {fix}. No more blocks were started; blocks already "
        "done are kept"
    )


def worker_pause_fraction(client: Any) -> float | None:
    """The lowest fraction of its memory limit above which a worker of ``client``'s
    cluster pauses (``distributed.worker.memory.pause``); None where none pauses, as
    on the clusters unet-tiles starts."""
    def pause() -> object:
        import dask

        return dask.config.get("distributed.worker.memory.pause", False)

    try:
        answers = client.run(pause, on_error="return").values()
    except Exception:  # a best-effort hint must never hide the real error
        return None
    fractions = [float(a) for a in answers
                 if isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < 1]
    return min(fractions) if fractions else None


def memory_hint(exc: BaseException, block_name: str, plan: Any, job: Any, client: Any) -> str:
    """``killed_worker_message`` for a ``KilledWorker`` on one block of ``plan``.

    The block size suggested fits below the memory at which the workers pause, where
    they do: a paused worker starts no block (engine/paused.py)."""
    current = max(plan.block_shape[-plan.dims:])
    limit = worker_memory_limit(client)
    suggestion = None
    if limit is not None:
        pause = worker_pause_fraction(client)
        usable = int(limit * pause) if pause is not None else limit
        suggestion = fitting_block_size(usable, plan, job)
    allowed = getattr(exc, "allowed_failures", None)
    attempts = allowed + 1 if isinstance(allowed, int) else None
    return killed_worker_message(block_name, current, limit, suggestion, attempts)


def fitting_block_size(limit_bytes: int, plan: Any, job: Any) -> int | None:
    """``suggest_block_size`` for ``plan``'s blocks of ``job`` on workers of ``limit_bytes``.

    The tiles counted are those a worker holds in its own memory at once: one on a
    CPU unless a batch is asked for (``auto_batch``), none on a GPU, whose tiles'
    activations live in device memory (an out-of-memory error there halves the batch).
    """
    from unet_tiles.model.files import read_config

    config = read_config(job.model_dir)
    host_tiles = 0 if job.device.startswith("cuda") else job.batch_size or 1
    return suggest_block_size(
        limit_bytes, max(plan.block_shape[-plan.dims:]), plan.divisor, dims=plan.dims,
        in_channels=config.in_channels, classes=config.classes, halo=max(plan.halo),
        tile_px=plan.tile_out, batch_size=host_tiles, base_channels=config.base_channels,
    )


__all__ = ["estimate_block_bytes", "fitting_block_size", "is_killed_worker", "is_transient",
           "killed_worker_message", "memory_hint", "suggest_block_size", "with_retries",
           "worker_memory_limit", "worker_pause_fraction"]

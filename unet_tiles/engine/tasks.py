"""One dask task per block for the passes after the block pass (pyramid, instances).

Unlike ``blocks.run_plan`` (bounded in flight, a progress bar, failure hints),
these passes are short and their tasks small: all are submitted at once, every
one runs, and the failures are named together.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from unet_tiles.errors import BlockFailedError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from distributed import Client

Task = tuple["Callable[..., int]", tuple[Any, ...], tuple[int, ...]]


def run_tasks(client: Client | None, tasks: Sequence[Task], what: str) -> list[int]:
    """Run ``(function, args, block index)`` tasks here in order (``client`` None) or on
    the cluster; their results. A failure fails none of the others; then
    ``BlockFailedError`` names how many failed and the first."""
    if client is None:
        return [function(*args) for function, args, _ in tasks]
    from distributed import wait

    token = f"{time.monotonic_ns():x}"
    futures = [client.submit(function, *args, pure=False,
                             key=f"{function.__name__}-{'.'.join(map(str, index))}-{token}")
               for function, args, index in tasks]
    wait(futures)
    failed = [(index, f) for (_, _, index), f in zip(tasks, futures, strict=True)
              if f.status != "finished"]
    if failed:
        index, future = failed[0]
        error: Any = future.exception()
        raise BlockFailedError(
            f"{what}: {len(failed)} of {len(tasks)} blocks failed; first: block "
            f"{'.'.join(map(str, index))}: {type(error).__name__}: {error}. Rerun the same "
            "command to finish", [{"what": what, "index": list(i)} for i, _ in failed])
    return [int(f.result()) for f in futures]


__all__ = ["Task", "run_tasks"]

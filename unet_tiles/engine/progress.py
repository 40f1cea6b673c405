"""The progress bar of a run: blocks done of the plan, Mpx/s and the ETA, on a terminal.

``run_plan`` makes one ``BlockProgress`` per run and calls ``update(pixels)``
as each block finishes (0 pixels for a failed one). The bar starts at the
blocks a resumed run skips; tqdm estimates the remaining time from this run's
blocks, and the postfix shows the megapixels written by this run per second
since it started. Off a terminal (a log file, a pipe, a flow run) it writes
nothing unless asked to.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import TextIO


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class BlockProgress:
    """Blocks done of ``total``, starting at ``initial`` (the blocks already done).

    ``enabled``: True to draw, False never; None (the default) draws only when
    ``file`` (default: ``sys.stderr`` at creation) is a terminal. ``clock`` is
    the time source of the Mpx/s figure (seconds; ``time.perf_counter``).
    """

    def __init__(self, total: int, initial: int = 0, *, enabled: bool | None = None,
                 file: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from tqdm import tqdm

        stream = sys.stderr if file is None else file
        self.enabled = is_terminal(stream) if enabled is None else bool(enabled)
        self.total = total
        self.done = initial
        self.pixels = 0
        self._clock = clock
        self._started = clock()
        self._bar = tqdm(total=total, initial=initial, unit="block", dynamic_ncols=True,
                         file=stream, disable=not self.enabled)

    @property
    def megapixels_per_s(self) -> float:
        """Pixels written by this run, in millions, per second since it started."""
        elapsed = self._clock() - self._started
        return self.pixels / 1e6 / elapsed if elapsed > 0 else 0.0

    @property
    def postfix(self) -> str:
        return f"{self.megapixels_per_s:.2f} Mpx/s"

    def update(self, pixels: int = 0) -> None:
        """One more block finished, having written ``pixels`` (0 if it failed)."""
        self.pixels += int(pixels)
        self.done += 1
        if self.enabled:
            # Set before the step, so the line tqdm draws carries the new rate.
            self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self.enabled:
            self._bar.set_postfix_str(self.postfix, refresh=False)
        self._bar.close()

    def __enter__(self) -> BlockProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


__all__ = ["BlockProgress", "is_terminal"]

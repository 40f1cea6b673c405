"""Prefect artifacts: live progress and run summaries.

Progress is updated from the engine's ``on_block`` callback, at most once per
``min_interval_s``: each update is an API call, and a run of many small blocks
would otherwise spend more time reporting than computing.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, cast

from prefect import get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID


def artifact_key(prefix: str, name: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) naming ``name``.

    The key groups the artifacts of every run on one output in the UI.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{prefix}-{slug[-60:].strip('-') or 'image'}"


class ThrottledProgress:
    """An ``on_block(done, total)`` callback that reports a percentage, throttled."""

    def __init__(self, update: Callable[[float], object], min_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._update = update
        self._interval = min_interval_s
        self._clock = clock
        self._last: float | None = None
        # Only the last value and a count: a run may report millions of blocks.
        self.last_reported: float | None = None
        self.updates = 0

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        finished = done >= total
        if not finished and self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        percent = 100.0 * done / total if total else 100.0
        try:
            self._update(percent)
        except Exception as exc:
            # Progress is a convenience: an API hiccup must never fail a run.
            get_run_logger().warning("progress update failed: %s", exc)
            return
        self.last_reported = percent
        self.updates += 1


def progress_artifact(description: str, key: str | None = None) -> ThrottledProgress:
    """Create a progress artifact at 0 % and return its throttled updater."""
    artifact_id = cast("UUID", create_progress_artifact(0.0, key=key, description=description))
    return ThrottledProgress(lambda percent: update_progress_artifact(artifact_id, percent))


def summary_row(input_url: str, output_url: str, summary: dict[str, Any],
                model_hash: str, preview: str | None = None) -> dict[str, Any]:
    """One row of the summary table; ``preview``: the PNG written after the run
    (a local path, as text), empty without one."""
    return {
        "input": input_url,
        "output": output_url,
        "pixels": summary["pixels"],
        "blocks done": summary["blocks_done"],
        "blocks skipped": summary["blocks_skipped"],
        "blocks total": summary["blocks_total"],
        "seconds": summary["seconds"],
        "Mpx/s": summary["megapixels_per_s"],
        # With --output instances; empty otherwise (one set of columns per table).
        "objects": summary.get("objects", ""),
        "model hash": model_hash[:12],
        "preview": preview or "",
    }


def table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    create_table_artifact(rows, key=key, description=description)

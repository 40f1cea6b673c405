"""Resuming after the input was repaired: which done blocks are still valid?

A run that met a missing or corrupt input chunk leaves the blocks that read it
undone. Restoring the chunk changes the input's fingerprint, so a plain
fingerprint check would refuse the rerun ("different input content") although
every block already done was computed from chunks that did not change.

``repaired_input_resumes`` accepts such a rerun when

* the stored run is unfinished (status not ``complete``),
* the input's metadata (shape, dtype, chunks, axes ...) is unchanged, and
* no input chunk that a *done* block read is newer than that block's
  done-marker (so no done block saw content that has since changed),

and the run then records the new fingerprint, so the finished store is
byte-identical to a run on the repaired input from the start. Local stores
only: remote stores' modification times are not trusted for this. It only
answers; the run (``engine.run``) decides and writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.pipeline.source import is_remote
from unet_tiles.pipeline.window import chunk_keys, input_region
from unet_tiles.pipeline.writer import DONE

if TYPE_CHECKING:
    from unet_tiles.pipeline.plan import BlockPlan
    from unet_tiles.pipeline.provenance import Provenance
    from unet_tiles.pipeline.source import ImageSource

logger = logging.getLogger(__name__)


def _chunk_files(array: Any, source: ImageSource, region: tuple[slice, ...]) -> list[Path]:
    root = Path(source.url.removeprefix("file://"))
    return [root / key for key in chunk_keys(array, region)]


def stale_done_blocks(url: str, plan: BlockPlan, source: ImageSource) -> list[str]:
    """Ids of done blocks that read an input chunk newer than their done-marker."""
    import zarr

    done = zarr.open_array(store=url, path=DONE, mode="r")
    marks = np.asarray(done[...]).astype(bool)
    array = source.open()
    stale = []
    for block in plan:
        if not marks[block.index]:
            continue
        key = done.metadata.encode_chunk_key(block.index)
        done_mtime = (Path(url) / DONE / key).stat().st_mtime
        region, _ = input_region(source, block)
        for chunk in _chunk_files(array, source, region):
            try:
                changed = chunk.stat().st_mtime > done_mtime
            except FileNotFoundError:
                changed = True
            if changed:
                stale.append(block.id)
                break
    return stale


def repaired_input_resumes(url: str, plan: BlockPlan, source: ImageSource,
                           stored: Provenance, wanted: Provenance) -> bool:
    """True when a run whose only difference is the input's content may resume
    (the stored run is unfinished and no done block read a changed chunk)."""
    if stored.complete or is_remote(url) or is_remote(source.url) \
            or not stored.same_input_metadata(wanted):
        return False
    try:
        stale = stale_done_blocks(url, plan, source)
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("cannot check which blocks the input change touches (%s)", exc)
        return False
    if stale:
        logger.warning("input changed under done block(s) %s", ", ".join(stale[:5]))
        return False
    logger.info("input changed only under unfinished blocks: resuming %s", url)
    return True


__all__ = ["repaired_input_resumes", "stale_done_blocks"]

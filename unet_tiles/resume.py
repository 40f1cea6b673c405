"""Resuming after the input was repaired: which done blocks are still valid?

A run that met a missing or corrupt input chunk leaves the blocks that read it
undone. Restoring the chunk changes the input's fingerprint, so a plain
fingerprint check would refuse the rerun ("different input content") although
every block already done was computed from chunks that did not change.

``adopt_repaired_input`` accepts such a rerun when

* the stored run is unfinished (status not ``complete``),
* the input's metadata (shape, dtype, chunks, axes ...) is unchanged, and
* no input chunk that a *done* block read is newer than that block's
  done-marker (so no done block saw content that has since changed),

and then records the new fingerprint, so the finished store is byte-identical
to a run on the repaired input from the start. Local stores only: remote
stores' modification times are not trusted for this.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from unet_tiles.plan import BlockPlan
    from unet_tiles.source import ImageSource

logger = logging.getLogger(__name__)


def _source_from_record(data: dict[str, Any]) -> ImageSource:
    from unet_tiles.source import ImageSource

    return ImageSource(
        url=data["url"], array_path=data["array_path"], axes=data["axes"],
        shape=tuple(data["shape"]), dtype=data["dtype"], chunks=tuple(data["chunks"]),
        zarr_format=data["zarr_format"], ome_version=data.get("ome_version"),
    )


def _chunk_files(array: Any, source: ImageSource, region: tuple[slice, ...]) -> list[Path]:
    from unet_tiles.window import chunk_keys

    root = Path(source.url.removeprefix("file://"))
    return [root / key for key in chunk_keys(array, region)]


def stale_done_blocks(url: str, plan: BlockPlan, source: ImageSource) -> list[str]:
    """Ids of done blocks that read an input chunk newer than their done-marker."""
    import zarr

    from unet_tiles.window import input_region

    done = zarr.open_array(store=url, path="done", mode="r")
    marks = np.asarray(done[...]).astype(bool)
    array = source.open()
    stale = []
    for block in plan:
        if not marks[block.index]:
            continue
        key = done.metadata.encode_chunk_key(block.index)
        done_mtime = (Path(url) / "done" / key).stat().st_mtime
        region, _ = input_region(source, block, plan.dims)
        for chunk in _chunk_files(array, source, region):
            try:
                changed = chunk.stat().st_mtime > done_mtime
            except FileNotFoundError:
                changed = True
            if changed:
                stale.append(block.id)
                break
    return stale


def adopt_repaired_input(url: str, plan: BlockPlan, stored: dict[str, Any],
                         wanted: dict[str, Any]) -> bool:
    """True (and the new fingerprint recorded) when a rerun may resume on a repaired input."""
    import zarr

    from unet_tiles.source import is_remote

    old_input = {k: v for k, v in stored.get("input", {}).items() if k != "fingerprint"}
    new_input = {k: v for k, v in wanted["input"].items() if k != "fingerprint"}
    if (
        stored.get("status") == "complete"
        or is_remote(url) or is_remote(new_input.get("url", ""))
        or old_input != new_input
        or stored.get("model_hash") != wanted["model_hash"]
        or stored.get("parameters") != wanted["parameters"]
    ):
        return False
    try:
        stale = stale_done_blocks(url, plan, _source_from_record(new_input))
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("cannot check which blocks the input change touches (%s)", exc)
        return False
    if stale:
        logger.warning("input changed under done block(s) %s", ", ".join(stale[:5]))
        return False
    group = zarr.open_group(store=url, mode="r+")
    group.attrs["unet_tiles"] = {**wanted, "status": stored.get("status", "running")}
    logger.info("input changed only under unfinished blocks: resuming %s", url)
    return True


__all__ = ["adopt_repaired_input", "stale_done_blocks"]

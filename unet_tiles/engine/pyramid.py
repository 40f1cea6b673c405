"""The OME layout's pyramid, level by level on the cluster (``pipeline/pyramid.py``).

Level ``i`` needs all of level ``i - 1``: the levels run one after the other,
the blocks of a level in parallel, one dask task each (read a slab of the level
below, downsample, write, mark done). Done blocks are skipped, so a killed run
resumes its pyramid; the result is the same bytes either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unet_tiles.engine.faults import with_retries
from unet_tiles.engine.tasks import run_tasks

if TYPE_CHECKING:
    from distributed import Client

    from unet_tiles.pipeline.geometry import Box
    from unet_tiles.pipeline.plan import BlockPlan
    from unet_tiles.pipeline.writer import OutputSpec


def process_level_block(spec: OutputSpec, level: int, index: tuple[int, ...], box: Box) -> int:
    """Level ``level``'s block ``box`` from level ``level - 1``; its pixels."""
    from unet_tiles.pipeline.geometry import Box
    from unet_tiles.pipeline.pyramid import downsample_block
    from unet_tiles.pipeline.writer import mark_done, open_output

    def write() -> None:
        below = open_output(spec, level - 1)
        this = open_output(spec, level)
        for source, target in ((below.labels, this.labels),
                               (below.instances, this.instances)):
            if source is not None and target is not None:
                downsample_block(source, target, box)
        if this.probabilities is not None and below.probabilities is not None:
            at = spec.ome.channel_index if spec.ome is not None else 0
            with_c = box.leading(box.ndim - at).concat(
                Box((0,), (spec.classes,))).concat(box.spatial(box.ndim - at))
            downsample_block(below.probabilities, this.probabilities, with_c)
        mark_done(this.done, index)

    with_retries(write, f"writing pyramid level {level} block {index}", spec.url)
    return box.size


def build_pyramid(client: Client | None, spec: OutputSpec, plan: BlockPlan) -> int:
    """Every pyramid level's blocks not yet done; the pixels written."""
    from unet_tiles.pipeline.pyramid import level_blocks
    from unet_tiles.pipeline.writer import pyramid_done

    if spec.ome is None:
        return 0
    pixels = 0
    for level in range(1, spec.levels):
        done = pyramid_done(spec.url, level)
        todo = [(index, box) for index, box in level_blocks(spec.ome.levels[level].shape,
                                                              plan.block_shape)
                if not done[index]]
        pixels += sum(run_tasks(client, [(process_level_block, (spec, level, i, b), i)
                                         for i, b in todo], f"pyramid level {level}"))
    return pixels


__all__ = ["build_pyramid", "process_level_block"]

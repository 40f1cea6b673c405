"""Pyramid levels, built block by block from the level below.

Level ``i`` is computed from level ``i - 1`` by nearest sampling (labels are never
interpolated): output pixel ``j`` of an axis shrunk from ``n`` to ``m`` takes the
input pixel at the centre of its footprint, ``floor((j + 0.5) * n / m)``::

    level i-1:  | 0 | 1 | 2 | 3 | 4 | 5 | 6 |        n = 7
    level i:    |   1   |   3   |   5   | 6 |        m = 4  (ceil(7 / 2))

A level's blocks are unions of its chunks (no two tasks write one chunk) and each
reads only the slab of the level below that its samples touch, so memory is one
block's, whatever the image. Each level has its own done-markers, written after a
block's chunks: a killed pyramid resumes where it stopped.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.pipeline.geometry import Box

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import zarr


def nearest_indices(n_from: int, n_to: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Indices into an axis of ``n_from`` sampling it to ``n_to`` (for ``[start, stop)``)."""
    j = np.arange(start, n_to if stop is None else stop)
    return np.minimum(((2 * j + 1) * n_from) // (2 * n_to), n_from - 1)


def level_blocks(shape: Sequence[int],
                 block_shape: Sequence[int]) -> Iterator[tuple[tuple[int, ...], Box]]:
    """(index, box) of each block of a level of ``shape`` in blocks of ``block_shape``."""
    image = Box.of_shape(shape)
    grid = [math.ceil(n / b) for n, b in zip(shape, block_shape, strict=True)]
    for index in itertools.product(*(range(g) for g in grid)):
        start = tuple(i * b for i, b in zip(index, block_shape, strict=True))
        yield index, Box(start, tuple(block_shape)).intersect(image)


def block_grid(shape: Sequence[int], block_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.ceil(n / b) for n, b in zip(shape, block_shape, strict=True))


def downsample_block(source: zarr.Array[Any], target: zarr.Array[Any], box: Box) -> None:
    """Write ``box`` of ``target`` from ``source``, one level below, by nearest sampling."""
    takes = [nearest_indices(n, m, o, e) for n, m, o, e in
             zip(source.shape, target.shape, box.offset, box.end, strict=True)]
    slab = tuple(slice(int(t.min()), int(t.max()) + 1) for t in takes)
    data = np.asarray(source[slab])
    target[box.to_slices()] = data[np.ix_(*(t - s.start for t, s in zip(takes, slab,
                                                                          strict=True)))]


__all__ = ["block_grid", "downsample_block", "level_blocks", "nearest_indices"]

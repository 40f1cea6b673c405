"""Touching cells split by a seeded watershed, exact across blocks (pure numpy).

With ``--split``, the objects of ``pipeline/instances.py`` are *seeds*: the
components of the instance classes without the border class (``border``) or
of the pixels whose instance-class probability reaches ``seed_probability``
(``probability``). The seeds then flood the instance-class pixels around them
in order of geodesic distance (a watershed on the distance from the seeds, in
steps of one neighbour, at most ``distance`` steps); a pixel reached by two
cells in the same step joins the one of its neighbours with the higher
probability::

    seeds (global ids) --flood, <= distance steps--> cells; a pixel out of every
                                                     seed's reach stays background

A pixel reached at step d took its cell from a neighbour reached at step d - 1,
and that one from one reached at d - 2, back to a seed: a chain of d <= distance
pixels; whether a neighbour was reached at a step is decided by paths no longer.
So a pixel's cell depends only on the pixels within ``distance`` of it, and with
ties broken by the pixel's index in the whole image, a block flooded from its
window (write box + ``distance``) equals the whole image flooded at once
(``tests/test_split.py``; one pixel less of window fails it). A watershed on
the probability itself would not be local: its flood follows the lowest path,
however long (hypothesis found a 3D case where a window of twice the distance
gave another cell than the whole image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

SPLITS = ("none", "border", "probability")
# Probabilities are quantised to this many levels for the flood's order.
LEVELS = 4096


def halo(distance: int) -> int:
    """How far beyond its block a block's flood must see (the module docstring)."""
    return distance


def flood(seeds: np.ndarray, probability: np.ndarray, origin: Sequence[int],
          image_shape: Sequence[int], dims: int, structure: np.ndarray,
          distance: int) -> np.ndarray:
    """Seeds grown over the instance-class pixels (``probability >= 0``; negative:
    another class) of one window whose first pixel is ``origin`` in the image."""
    lead = seeds.ndim - dims
    labels = seeds.reshape(seeds.shape[lead:]).astype(np.int64)
    plane_p = probability.reshape(probability.shape[lead:]).astype(np.float64)
    mask = plane_p >= 0
    key = priority(plane_p, origin[lead:], image_shape[lead:])
    sizes: tuple[int, ...] = labels.shape
    centre = (1,) * dims
    steps = [tuple(i - 1 for i in at) for at in np.argwhere(structure) if tuple(at) != centre]
    for _ in range(distance):
        # A pixel first reached at this step takes the label of its reached
        # neighbour of the highest probability (lowest key): all of those were
        # reached at the step before, so the rule sees only pixels near it.
        best_key = np.full(sizes, np.iinfo(np.int64).max, dtype=np.int64)
        best_label = np.zeros(sizes, dtype=np.int64)
        for step in steps:
            here = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(step, sizes,
                                                                            strict=True))
            there = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(step, sizes,
                                                                             strict=True))
            neighbour, neighbour_key = labels[there], key[there]
            better = (neighbour > 0) & (neighbour_key < best_key[here])
            best_key[here] = np.where(better, neighbour_key, best_key[here])
            best_label[here] = np.where(better, neighbour, best_label[here])
        grow = mask & (labels == 0) & (best_label > 0)
        if not grow.any():
            break
        labels[grow] = best_label[grow]
    return labels.astype(seeds.dtype).reshape(seeds.shape)


def priority(probability: np.ndarray, origin: Sequence[int],
             image_shape: Sequence[int]) -> np.ndarray:
    """A unique key per pixel, lower for a higher probability: the quantised
    ``1 - probability``, ties broken by the pixel's index in the whole image, so
    every window orders its pixels as the whole image does."""
    sizes: tuple[int, ...] = probability.shape
    index = np.ravel_multi_index(
        np.meshgrid(*(np.arange(o, o + n) for o, n in zip(origin, sizes, strict=True)),
                    indexing="ij"),
        tuple(image_shape))
    level = np.rint((1 - np.clip(probability, 0, 1)) * (LEVELS - 1)).astype(np.int64)
    return np.asarray(level * int(np.prod(image_shape, dtype=np.int64)) + index)


def measure_ids(ids: np.ndarray, probability: np.ndarray, origin: Sequence[int]
                ) -> np.ndarray:
    """Object rows (``instances.stats_dtype``) of the non-zero ids of a labelled block."""
    from unet_tiles.pipeline.instances import measure

    present, local = np.unique(ids, return_inverse=True)
    local = local.reshape(ids.shape)
    if present.size and present[0] == 0:
        present = present[1:]
    else:
        local = local + 1  # no background here: local ids start at 1 all the same
    rows = measure(local, int(present.size), np.maximum(probability, 0), origin)
    rows["id"] = present
    return rows


def boundary_ids(ids: np.ndarray, dims: int) -> np.ndarray:
    """The ids on a block's outer spatial faces: the only ones that may lie in
    another block too (a flooded cell is connected)."""
    lead = ids.ndim - dims
    plane = ids.reshape(ids.shape[lead:])
    faces = [plane.take(i, axis=a).ravel() for a in range(dims) for i in (0, -1)]
    found = np.unique(np.concatenate(faces)) if faces else np.zeros(0, ids.dtype)
    return found[found > 0]

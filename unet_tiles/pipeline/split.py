"""Touching cells split by a seeded watershed, exact across blocks (pure numpy/scipy/skimage).

With ``--split``, the objects of ``pipeline/instances.py`` are *seeds*: the
components of the instance classes without the border class (``border``) or
of the pixels whose instance-class probability reaches ``seed_probability``
(``probability``). Each seed then floods the instance-class pixels around it
by a watershed on ``1 - probability``, at most ``distance`` px (geodesic) from it::

    seeds (global ids) --flood, <= distance px--> cells; a pixel out of every
                                                  seed's reach stays background

The flood at a pixel depends only on the seeds and pixels within ``2 x distance``
of it (a seed that claims a pixel on another's path lies within ``distance`` of
that path), and every tie is broken by the pixel's index in the whole image, so
a block grown from its window (write box + ``2 x distance``) equals the whole
image grown at once.
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
    """How far beyond its block a block's flood must see."""
    return 2 * distance


def flood(seeds: np.ndarray, probability: np.ndarray, origin: Sequence[int],
          image_shape: Sequence[int], dims: int, structure: np.ndarray,
          distance: int) -> np.ndarray:
    """Seeds grown over the instance-class pixels (``probability >= 0``; negative:
    another class) of one window whose first pixel is ``origin`` in the image."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    lead = seeds.ndim - dims
    plane_seeds = seeds.reshape(seeds.shape[lead:])
    plane_p = probability.reshape(probability.shape[lead:]).astype(np.float64)
    mask = plane_p >= 0
    reach = ndimage.binary_dilation(plane_seeds > 0, structure, iterations=distance,
                                    mask=mask) | (plane_seeds > 0)
    # A unique elevation per pixel: the quantised 1 - probability, ties broken by
    # the pixel's index in the whole image, whatever window it is seen from.
    sizes: tuple[int, ...] = plane_p.shape
    index = np.ravel_multi_index(
        np.meshgrid(*(np.arange(o, o + n) for o, n in zip(origin[lead:], sizes, strict=True)),
                    indexing="ij"),
        tuple(image_shape[lead:]))
    level = np.rint((1 - np.clip(plane_p, 0, 1)) * (LEVELS - 1)).astype(np.int64)
    elevation = (level * int(np.prod(image_shape[lead:], dtype=np.int64)) + index) \
        .astype(np.float64)
    grown = watershed(elevation, markers=plane_seeds.astype(np.int64), mask=reach,
                      connectivity=structure)
    return np.asarray(grown, dtype=seeds.dtype).reshape(seeds.shape)


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

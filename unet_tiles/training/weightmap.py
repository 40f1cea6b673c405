"""Training targets from instance masks, and the U-Net paper's loss weight map.

The paper (Ronneberger et al. 2015, eq. 2) weighs each pixel's cross-entropy by::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances class frequencies; ``d1``/``d2`` are the distances to the
nearest and second-nearest object, so the thin background gaps between touching
objects weigh most. As in the paper's figure 3 the separation term is applied to
background pixels only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

BACKGROUND = 0
OBJECT = 1
BORDER = 2
# The separation term is dropped below this fraction of w0 (it only ever adds).
_NEGLIGIBLE = 1e-3


def touching_border(instances: np.ndarray) -> np.ndarray:
    """Pixels of an object that touch a different object (full connectivity)."""
    padded = np.pad(instances, 1, mode="edge")
    centre = tuple(slice(1, -1) for _ in range(instances.ndim))
    border = np.zeros(instances.shape, dtype=bool)
    for step in np.ndindex(*(3,) * instances.ndim):
        if all(s == 1 for s in step):
            continue
        shifted = padded[tuple(slice(s, s + n) for s, n in zip(step, instances.shape, strict=True))]
        border |= (shifted != padded[centre]) & (shifted > 0)
    return border & (instances > 0)


def instances_to_classes(instances: np.ndarray, border_class: bool = False) -> np.ndarray:
    """Instance ids -> classes: background 0, object 1, touching border 2 (or 0).

    Without a border class, the pixels where objects touch become background,
    as in the paper's ground truth, so that connected components of the
    predicted object class separate touching objects again.
    """
    classes = (instances > 0).astype(np.uint8)
    classes[touching_border(instances)] = BORDER if border_class else BACKGROUND
    return classes


def class_weights(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-class weights giving every present class the same total weight.

    Normalised so the mean weight over all pixels is 1; absent classes get 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def separation_weights(objects: np.ndarray, w0: float = 10.0, sigma_px: float = 5.0,
                       background: np.ndarray | None = None) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels, 0 elsewhere.

    Args:
        objects: Instance ids (0 = background), any number of dimensions.
        w0: Weight of the separation term.
        sigma_px: Its width in pixels.
        background: Where the term applies (default ``objects == 0``).

    Distances are exact Euclidean distances, computed per object only within
    its bounding box grown by the distance beyond which the term is negligible,
    so the cost grows with the number of objects, not with their square.
    """
    if w0 < 0 or sigma_px <= 0:
        raise UsageError(f"weight map needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma_px}")
    if background is None:
        background = objects == 0
    out = np.zeros(objects.shape, dtype=np.float32)
    if w0 == 0:
        return out
    reach = math.ceil(sigma_px * math.sqrt(2 * math.log(1 / _NEGLIGIBLE)))
    d1 = np.full(objects.shape, np.inf, dtype=np.float32)
    d2 = np.full(objects.shape, np.inf, dtype=np.float32)
    for ident, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(s.start - reach, 0), min(s.stop + reach, n))
            for s, n in zip(box, objects.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(objects[window] != ident).astype(np.float32)
        first, second = d1[window], d2[window]
        closer = dist < first
        # Keep the two smallest distances: a new nearest pushes the old one down.
        np.copyto(second, np.where(closer, first, np.minimum(second, dist)))
        np.copyto(first, np.where(closer, dist, first))
    total = d1 + d2
    near = background & np.isfinite(total)
    out[near] = w0 * np.exp(-(total[near] ** 2) / (2 * sigma_px**2))
    return out


def weight_map(classes: np.ndarray, objects: np.ndarray | None, per_class: np.ndarray,
               w0: float = 10.0, sigma_px: float = 5.0) -> np.ndarray:
    """The paper's full weight map: class balance plus object separation.

    Args:
        classes: Class per pixel.
        objects: Instance ids of the objects to separate (None: no separation term).
        per_class: Weight per class (``class_weights``; ones to switch balancing off).
        w0: Separation weight (0 switches the term off).
        sigma_px: Separation width in pixels.
    """
    weights = np.asarray(per_class, dtype=np.float32)[classes]
    if objects is not None and w0 > 0:
        weights += separation_weights(objects, w0, sigma_px, background=classes == BACKGROUND)
    return np.asarray(weights)


def separated_objects(instances: np.ndarray) -> np.ndarray:
    """Instance ids with the touching-border pixels removed (the paper's gaps)."""
    return np.where(touching_border(instances), 0, instances)

"""How well the demo segmented: foreground IoU over the whole image, AP@0.5 on a region.

Streamed chunk by chunk: the whole image never needs to fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from unet_tiles.demo.preview import open_zarr

if TYPE_CHECKING:
    import os


@dataclass(frozen=True)
class Accuracy:
    """Foreground IoU over the whole image; instance AP at IoU 0.5 on the preview region."""

    iou_foreground: float
    ap50_preview: float
    objects_preview: int


def accuracy(labels_path: str | os.PathLike[str], truth_path: str | os.PathLike[str],
             region: tuple[slice, ...]) -> Accuracy:
    """Score predicted classes against the generated instance ground truth."""
    from unet_tiles.training.metrics import instances_from_classes, iou_from_confusion, match_counts

    labels = open_zarr(labels_path)
    truth = open_zarr(truth_path)
    chunk = truth.chunks
    matrix = np.zeros((2, 2), dtype=np.int64)
    for corner in np.ndindex(*(-(-n // c) for n, c in zip(truth.shape, chunk, strict=True))):
        where = tuple(slice(i * c, min((i + 1) * c, n))
                      for i, c, n in zip(corner, chunk, truth.shape, strict=True))
        t = (np.asarray(truth[where]) > 0).astype(np.int64)
        p = (np.asarray(labels[where]) > 0).astype(np.int64)
        matrix += np.bincount((t * 2 + p).ravel(), minlength=4).reshape(2, 2)
    iou = iou_from_confusion(matrix)[1]
    true_instances = np.asarray(truth[region])
    tp, fp, fn = match_counts(true_instances, instances_from_classes(np.asarray(labels[region])))
    total = tp + fp + fn
    return Accuracy(iou, tp / total if total else 1.0, int(len(np.unique(true_instances)) - 1))

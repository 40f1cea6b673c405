"""How well the demo segmented: foreground IoU over the whole image, AP@0.5 on a region,
and the instances' object count and AP@0.5 over the whole image.

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


@dataclass(frozen=True)
class InstanceAccuracy:
    """The instance output against the generated objects, over the whole image."""

    objects: int
    true_objects: int
    ap50: float


def instance_accuracy(instances_path: str | os.PathLike[str],
                      truth_path: str | os.PathLike[str]) -> InstanceAccuracy:
    """AP at IoU 0.5 (TP / (TP + FP + FN)) of the instances against the true objects,
    chunk by chunk: memory grows with the objects, not the image."""
    instances = open_zarr(instances_path)
    truth = open_zarr(truth_path)
    chunk = truth.chunks
    overlaps, true_areas, areas = [], [], []
    for corner in np.ndindex(*(-(-n // c) for n, c in zip(truth.shape, chunk, strict=True))):
        where = tuple(slice(i * c, min((i + 1) * c, n))
                      for i, c, n in zip(corner, chunk, truth.shape, strict=True))
        t = np.asarray(truth[where]).astype(np.int64).ravel()
        p = np.asarray(instances[where]).astype(np.int64).ravel()
        both = (t > 0) & (p > 0)
        overlaps.append(_counted(np.stack([t[both], p[both]], axis=1)))
        true_areas.append(_counted(t[t > 0][:, None]))
        areas.append(_counted(p[p > 0][:, None]))
    pairs, overlap = _total(overlaps, 2)
    true_ids, true_area = _total(true_areas, 1)
    ids, area = _total(areas, 1)
    a = true_area[np.searchsorted(true_ids[:, 0], pairs[:, 0])] if pairs.size else np.zeros(0)
    b = area[np.searchsorted(ids[:, 0], pairs[:, 1])] if pairs.size else np.zeros(0)
    tp = int((overlap / np.maximum(a + b - overlap, 1) > 0.5).sum())
    fp, fn = len(ids) - tp, len(true_ids) - tp
    return InstanceAccuracy(len(ids), len(true_ids), tp / (tp + fp + fn) if tp + fp + fn else 1.0)


def _counted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, counts = np.unique(keys, axis=0, return_counts=True)
    return unique, counts


def _total(parts: list[tuple[np.ndarray, np.ndarray]], width: int
           ) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([k.reshape(-1, width) for k, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    if keys.size == 0:
        return keys, counts
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    return unique, np.bincount(inverse.ravel(), weights=counts).astype(np.int64)

"""Validation: whole-image prediction in memory, IoU per class, average precision.

``predict_classes`` is the seamless recipe of DESIGN.md in its smallest form,
for images that fit in memory (validation, benchmarks): mirror-pad once, then
run tiles that start on the pooling grid. Large images go through the
segmentation pipeline instead.

Average precision at IoU 0.5 follows the cell-segmentation convention
``TP / (TP + FP + FN)``, where a predicted object matches a true one when their
IoU exceeds 0.5 (such a match is necessarily one-to-one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from unet_tiles.model.unet import UNet


def predict_classes(model: UNet, image: np.ndarray, tile_px: int = 256,
                    device: str = "cpu") -> np.ndarray:
    """Argmax class of a ``(C, *spatial)`` image, computed in tiles, seamlessly."""
    import torch

    spatial = image.shape[1:]
    halo = model.halo
    sizes, strides, pad = [], [], []
    for n, h in zip(spatial, halo, strict=True):
        size = model.valid_size(min(tile_px, n) + 2 * h)
        out = model.output_size(size)
        assert out is not None  # valid_size guarantees it
        # Tiles start at multiples of the pooling factor so all share the whole
        # image's pooling grid; each keeps the first ``stride`` of its outputs.
        stride = max(out // model.divisor, 1) * model.divisor
        count = -(-n // stride)
        sizes.append(size)
        strides.append(stride)
        pad.append((h, (count - 1) * stride + size - n - h))
    padded = np.pad(image, [(0, 0), *pad], mode="reflect")
    result = np.zeros(spatial, dtype=np.uint8)
    starts = [range(0, n, s) for n, s in zip(spatial, strides, strict=True)]
    model.eval()
    with torch.inference_mode():
        for corner in np.ndindex(*(len(s) for s in starts)):
            origin = [s[i] for s, i in zip(starts, corner, strict=True)]
            window = tuple(slice(o, o + size) for o, size in zip(origin, sizes, strict=True))
            x = torch.from_numpy(np.ascontiguousarray(padded[(slice(None), *window)]))
            logits = model(x[None].to(device))[0]
            labels = logits.argmax(0).to("cpu").numpy().astype(np.uint8)
            target = tuple(
                slice(o, min(o + s, n)) for o, s, n in zip(origin, strides, spatial, strict=True)
            )
            result[target] = labels[tuple(slice(0, t.stop - t.start) for t in target)]
    return result


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``classes x classes`` pixel counts, rows = truth, columns = prediction."""
    index = truth.astype(np.int64).ravel() * classes + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def iou_from_confusion(matrix: np.ndarray) -> list[float]:
    """IoU per class; NaN for a class absent from both truth and prediction."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(v) for v in np.where(union > 0, tp / union, np.nan)]


def match_counts(truth: np.ndarray, predicted: np.ndarray,
                 threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of predicted vs true instance labels at an IoU threshold >= 0.5."""
    truth = truth.ravel()
    predicted = predicted.ravel()
    both = (truth > 0) & (predicted > 0)
    pairs, overlap = np.unique(
        np.stack([truth[both], predicted[both]]).astype(np.int64), axis=1, return_counts=True
    )
    true_ids, true_area = np.unique(truth[truth > 0], return_counts=True)
    pred_ids, pred_area = np.unique(predicted[predicted > 0], return_counts=True)
    a = true_area[np.searchsorted(true_ids, pairs[0])] if pairs.size else np.zeros(0)
    b = pred_area[np.searchsorted(pred_ids, pairs[1])] if pairs.size else np.zeros(0)
    iou = overlap / np.maximum(a + b - overlap, 1)
    tp = int((iou > threshold).sum())
    return tp, len(pred_ids) - tp, len(true_ids) - tp


def average_precision(truth: np.ndarray, predicted: np.ndarray, threshold: float = 0.5) -> float:
    tp, fp, fn = match_counts(truth, predicted, threshold)
    return tp / (tp + fp + fn) if tp + fp + fn else 1.0


def instances_from_classes(classes: np.ndarray, object_class: int = 1) -> np.ndarray:
    """Connected components of the object class (gaps/borders separate touching objects)."""
    labels, _ = ndimage.label(classes == object_class)
    return np.asarray(labels)


def score(truth_classes: Sequence[np.ndarray], predicted: Sequence[np.ndarray], classes: int,
          truth_instances: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Metrics over several images: ``iou_<class>``, ``iou_foreground``, ``mean_iou``, ``ap50``."""
    matrix = sum(
        (confusion(t, p, classes) for t, p in zip(truth_classes, predicted, strict=True)),
        np.zeros((classes, classes), dtype=np.int64),
    )
    ious = iou_from_confusion(matrix)
    result = {f"iou_{k}": v for k, v in enumerate(ious)}
    result["mean_iou"] = float(np.nanmean(ious[1:]))
    fg = np.array([[matrix[0, 0], matrix[0, 1:].sum()],
                   [matrix[1:, 0].sum(), matrix[1:, 1:].sum()]])
    result["iou_foreground"] = iou_from_confusion(fg)[1]
    if truth_instances is not None:
        counts = np.zeros(3, dtype=np.int64)
        for instances, pred in zip(truth_instances, predicted, strict=True):
            counts += match_counts(instances, instances_from_classes(pred))
        tp, fp, fn = (int(c) for c in counts)
        result["ap50"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return result

"""Metrics: IoU from the confusion matrix and instance AP, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from unet_tiles.training.metrics import average_precision, instances_from_classes, score


def test_metrics_by_hand() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    predicted = np.array([[0, 1, 1, 1], [0, 0, 0, 1]])
    result = score([truth], [predicted], 2)
    assert result["iou_1"] == pytest.approx(3 / 5)
    assert result["iou_0"] == pytest.approx(3 / 5)
    instances = np.array([[1, 1, 0, 2, 2, 0, 3]])
    guess = np.array([[5, 5, 0, 7, 0, 0, 0]])
    # object 1 matches (IoU 1), object 2 overlaps 1/2 (not > 0.5), object 3 missed.
    assert average_precision(instances, guess) == pytest.approx(1 / (1 + 1 + 2))


def test_instances_from_classes_separates_touching_borders() -> None:
    classes = np.array([[1, 1, 0, 1], [1, 2, 0, 1]])
    instances = instances_from_classes(classes)
    assert instances.max() == 2
    assert instances[0, 0] == instances[1, 0] != instances[0, 3]
    assert instances[1, 1] == 0

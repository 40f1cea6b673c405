"""The paper's weight map against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_tiles.errors import UsageError
from unet_tiles.training.weightmap import (
    class_weights,
    instances_to_classes,
    separated_objects,
    separation_weights,
    touching_border,
    weight_map,
)


def test_separation_term_matches_hand_computed_distances() -> None:
    # Two vertical bars: object 1 in columns 0-1, object 2 in columns 6-8.
    # A pixel in column c between them has d1, d2 = c - 1, 6 - c.
    objects = np.zeros((5, 9), dtype=np.uint32)
    objects[:, 0:2] = 1
    objects[:, 6:9] = 2
    w = separation_weights(objects, w0=10.0, sigma_px=5.0)
    for column in (2, 3, 4, 5):
        d1, d2 = column - 1, 6 - column
        expected = 10.0 * math.exp(-((d1 + d2) ** 2) / (2 * 5.0**2))
        np.testing.assert_allclose(w[:, column], expected, rtol=1e-6)
    assert (w[:, 0:2] == 0).all()  # objects themselves get no separation weight
    assert (w[:, 6:9] == 0).all()


def test_second_distance_is_infinite_with_one_object() -> None:
    objects = np.zeros((7, 7), dtype=np.uint32)
    objects[3, 3] = 1
    assert (separation_weights(objects) == 0).all()


def test_far_objects_do_not_weigh_but_close_ones_do() -> None:
    objects = np.zeros((1, 200), dtype=np.uint32)
    objects[0, 0] = 1
    objects[0, 199] = 2
    assert separation_weights(objects, sigma_px=5.0).max() == 0  # d1 + d2 = 198
    objects[0, 3] = 3
    w = separation_weights(objects, w0=10.0, sigma_px=5.0)
    # column 1: 1 px from object 1, 2 px from object 3
    np.testing.assert_allclose(w[0, 1], 10.0 * math.exp(-9 / 50), rtol=1e-6)


def test_3d_weights() -> None:
    objects = np.zeros((3, 3, 6), dtype=np.uint32)
    objects[:, :, 0] = 1
    objects[:, :, 5] = 2
    w = separation_weights(objects, w0=1.0, sigma_px=2.0)
    np.testing.assert_allclose(w[1, 1, 2], math.exp(-25 / 8), rtol=1e-6)


def test_class_weights_balance_total_weight() -> None:
    w = class_weights([300, 100, 0])
    assert w[2] == 0
    np.testing.assert_allclose(w[0] * 300, w[1] * 100)
    np.testing.assert_allclose((w[0] * 300 + w[1] * 100) / 400, 1.0)


def test_touching_objects_get_a_gap_or_a_border_class() -> None:
    instances = np.zeros((4, 6), dtype=np.uint32)
    instances[:, 0:3] = 1
    instances[:, 3:5] = 2
    border = touching_border(instances)
    assert border[:, 2:4].all()
    assert not border[:, [0, 1, 4, 5]].any()
    assert (instances_to_classes(instances)[:, 2:4] == 0).all()
    assert (instances_to_classes(instances, border_class=True)[:, 2:4] == 2).all()
    assert (instances_to_classes(instances)[:, 0:2] == 1).all()
    assert (separated_objects(instances)[:, 2:4] == 0).all()


def test_full_map_adds_class_balance_and_separation() -> None:
    instances = np.zeros((5, 9), dtype=np.uint32)
    instances[:, 0:2] = 1
    instances[:, 6:9] = 2
    classes = instances_to_classes(instances)
    per_class = np.array([0.5, 2.0], dtype=np.float32)
    w = weight_map(classes, separated_objects(instances), per_class, w0=10.0, sigma_px=5.0)
    np.testing.assert_allclose(w[0, 3], 0.5 + 10 * math.exp(-25 / 50), rtol=1e-6)
    np.testing.assert_allclose(w[0, 0], 2.0)
    np.testing.assert_allclose(weight_map(classes, None, per_class)[0, 3], 0.5)


def test_bad_parameters() -> None:
    with pytest.raises(UsageError, match="sigma"):
        separation_weights(np.zeros((3, 3), dtype=np.uint32), sigma_px=0)

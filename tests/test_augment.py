"""Augmentation keeps image and targets aligned and is reproducible."""

from __future__ import annotations

import numpy as np

from unet_tiles.demo.synth import generate_arrays
from unet_tiles.training.augment import AugmentConfig, coordinate_map, sample_tile


def _smooth_scene(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    field = np.sin(y / 7.0) * np.cos(x / 9.0) + 0.3 * np.sin((x + y) / 5.0)
    return field, (field > 0.2).astype(np.uint8)


def test_elastic_deformation_keeps_image_and_mask_aligned() -> None:
    field, mask = _smooth_scene((61, 67))
    weights = mask.astype(np.float32) + 1
    config = AugmentConfig(intensity=False, elastic_sigma_px=10.0)
    for seed in range(5):
        tile = sample_tile(field[None], mask, weights, (44, 44), (44, 44),
                           np.random.default_rng(seed), config)
        # The deformed mask equals the threshold of the deformed image, except
        # where linear interpolation of the image straddles the threshold.
        thresholded = tile.image[0] > 0.2
        agree = (thresholded == (tile.classes == 1)).mean()
        assert agree > 0.97, agree
        # Weights are interpolated linearly, classes by nearest neighbour.
        assert (np.rint(tile.weights) == tile.classes + 1).mean() > 0.97
        # and it really was deformed: not a plain crop of the input.
        assert not np.array_equal(tile.image[0], field[:44, :44])


def test_output_targets_are_the_centre_of_the_input() -> None:
    field, mask = _smooth_scene((50, 50))
    tile = sample_tile(field[None], mask, mask.astype(np.float32), (40, 40), (20, 20),
                       np.random.default_rng(1), AugmentConfig(intensity=False))
    centre = tile.image[0, 10:30, 10:30] > 0.2
    assert (centre == (tile.classes == 1)).mean() > 0.95


def test_without_augmentation_a_tile_is_a_mirrored_crop() -> None:
    image, labels = generate_arrays((30, 40), seed=0)
    classes = (labels > 0).astype(np.uint8)
    tile = sample_tile(image[None], classes, np.ones(classes.shape, np.float32), (36, 36),
                       (20, 20), np.random.default_rng(0), AugmentConfig.off(),
                       centre=(2.5, 17.5))
    padded = np.pad(image, 20, mode="reflect")
    np.testing.assert_array_equal(tile.image[0], padded[20 + 2 - 17: 20 + 2 - 17 + 36,
                                                         20 + 17 - 17: 20 + 17 - 17 + 36])
    padded_classes = np.pad(classes, 20, mode="reflect")
    np.testing.assert_array_equal(tile.classes, padded_classes[20 - 7: 20 + 13, 20 + 8: 20 + 28])


def test_same_seed_same_tile_and_3d() -> None:
    image, labels = generate_arrays((20, 30, 30), seed=0)
    classes = (labels > 0).astype(np.uint8)
    weights = np.ones(classes.shape, np.float32)
    a, b = (sample_tile(image[None], classes, weights, (16, 20, 20), (8, 12, 12),
                        np.random.default_rng(7), AugmentConfig()) for _ in range(2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert a.image.shape == (1, 16, 20, 20)
    assert a.classes.shape == (8, 12, 12)
    coords = coordinate_map((16, 20, 20), (10, 15, 15), AugmentConfig(), np.random.default_rng(0))
    assert coords.shape == (3, 16, 20, 20)


def test_config_round_trip() -> None:
    config = AugmentConfig(elastic_sigma_px=4.0, gain=(0.9, 1.1))
    assert AugmentConfig.from_dict(config.to_dict()) == config

"""Training tiles with the U-Net paper's augmentation.

A tile is sampled through one coordinate map from output pixels to source
image positions, so image, classes and weights are deformed identically::

    source = centre + rotate(flip(p)) + elastic(p)        p: tile pixel, centred

``elastic`` is a random displacement on a coarse grid (the paper: 3 x 3, 10 px
standard deviation), interpolated smoothly (cubic) to every pixel. Positions
outside the image are mirrored (numpy's ``reflect``, scipy's ``mirror``), the
same extrapolation the tiler uses at inference. The network input covers the
whole map; classes and weights are read on its centre crop, the network output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, and how strong (lengths in pixels)."""

    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma_px: float = 10.0
    rotate: bool = True
    flip: bool = True
    intensity: bool = True
    gain: tuple[float, float] = (0.8, 1.25)
    offset: float = 0.1  # in units of the data's intensity scale (1 / input_scale)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        values = dict(data)
        if "gain" in values:
            values["gain"] = tuple(values["gain"])
        return cls(**values)

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(elastic=False, rotate=False, flip=False, intensity=False)


@dataclass(frozen=True)
class Tile:
    """One training example: network input and targets on its output region."""

    image: np.ndarray  # (C, *in_shape) float32, raw intensities
    classes: np.ndarray  # out_shape int64
    weights: np.ndarray  # out_shape float32


def _rotation(dims: int, rng: np.random.Generator) -> np.ndarray:
    if dims == 2:
        angle = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(angle), math.sin(angle)
        return np.array([[c, -s], [s, c]])
    # Random rotation about z only: 3D stacks are often anisotropic in z.
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _elastic(in_shape: Sequence[int], config: AugmentConfig,
             rng: np.random.Generator) -> list[np.ndarray]:
    dims = len(in_shape)
    grid = (config.elastic_grid,) * dims
    # Cubic interpolation of the coarse grid spanning the tile, evaluated per pixel.
    positions = np.meshgrid(
        *(np.linspace(0, config.elastic_grid - 1, n) for n in in_shape), indexing="ij"
    )
    return [
        ndimage.map_coordinates(
            rng.normal(0, config.elastic_sigma_px, size=grid), positions, order=3, mode="nearest"
        )
        for _ in range(dims)
    ]


def coordinate_map(in_shape: Sequence[int], centre: Sequence[float], config: AugmentConfig,
                   rng: np.random.Generator) -> np.ndarray:
    """Source positions ``(dims, *in_shape)`` for every pixel of a network input tile."""
    dims = len(in_shape)
    local = np.stack(np.meshgrid(
        *(np.arange(n, dtype=np.float64) - (n - 1) / 2 for n in in_shape), indexing="ij"
    ))
    matrix = np.eye(dims)
    if config.flip:
        matrix = matrix @ np.diag(rng.choice([-1.0, 1.0], size=dims))
    if config.rotate:
        matrix = _rotation(dims, rng) @ matrix
    coords = np.tensordot(matrix, local, axes=1)
    if config.elastic:
        coords += np.stack(_elastic(in_shape, config, rng))
    coords += np.asarray(centre, dtype=np.float64).reshape((dims,) + (1,) * dims)
    return coords


def sample_tile(
    image: np.ndarray,
    classes: np.ndarray,
    weights: np.ndarray,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    rng: np.random.Generator,
    config: AugmentConfig,
    intensity_scale: float = 1.0,
    centre: Sequence[float] | None = None,
) -> Tile:
    """Cut one (augmented) training tile from an image and its targets.

    Args:
        image: ``(C, *spatial)`` raw intensities.
        classes: ``spatial`` class ids.
        weights: ``spatial`` loss weights.
        in_shape: Network input size (valid for the model).
        out_shape: Network output size for ``in_shape``.
        rng: Source of every random choice (seeded per step by the trainer).
        config: Which augmentations to apply.
        intensity_scale: Typical intensity spread, for the additive offset.
        centre: Tile centre in the image (default: uniform over the image, a random shift).
    """
    spatial = classes.shape
    if centre is None:
        centre = [rng.uniform(0, n - 1) for n in spatial]
    coords = coordinate_map(in_shape, centre, config, rng)
    # The network output is the centre of its input.
    centre_crop = tuple(
        slice((a - b) // 2, (a - b) // 2 + b) for a, b in zip(in_shape, out_shape, strict=True)
    )
    out_coords = coords[(slice(None), *centre_crop)]
    pixels = np.stack([
        ndimage.map_coordinates(channel.astype(np.float32), coords, order=1, mode="mirror")
        for channel in image
    ]).astype(np.float32)
    if config.intensity:
        gain = rng.uniform(*config.gain)
        pixels = pixels * gain + rng.uniform(-1, 1) * config.offset * intensity_scale
    labels = ndimage.map_coordinates(classes, out_coords, order=0, mode="mirror")
    loss_weights = ndimage.map_coordinates(weights, out_coords, order=1, mode="mirror")
    return Tile(pixels.astype(np.float32), labels.astype(np.int64),
                loss_weights.astype(np.float32))

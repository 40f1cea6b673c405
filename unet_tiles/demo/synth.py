"""Microscopy-like images with instance ground truth, rendered chunk by chunk.

Objects come from a seeded, jittered grid: every grid cell (``cell_px`` wide)
holds at most one object whose parameters are a hash of ``(seed, cell index)``.
An object never reaches past its neighbouring cells, so a chunk is rendered
from the 3**dims neighbour offsets of its own cells, with no global state::

    +-----+-----+-----+       each pixel looks at the objects of its own
    |  o  |   o |     |       cell and of the 8 around it (27 in 3D);
    +-----+-----+-----+       pixels of one cell share those neighbours,
    | o   |  x  |  o  |       so parameters broadcast over (cell, in-cell)
    +-----+-----+-----+       axes instead of being gathered per pixel
    |     | o   |   o |
    +-----+-----+-----+

Illumination is an analytic field of global coordinates, blur is rendered as a
smooth edge profile (no global convolution), and noise is seeded per chunk, so
any chunk is a pure function of ``(spec, seed, chunk position)`` and an image of
any size is written without ever holding it in memory.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.errors import UsageError
from unet_tiles.pipeline.geometry import Box

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

KINDS = ("nuclei", "cells")
DTYPES = ("uint8", "uint16")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class SynthSpec:
    """Appearance of one kind of synthetic specimen (all lengths in pixels)."""

    cell_px: int = 32
    density: float = 0.75
    jitter: float = 0.6
    radius_px: tuple[float, float] = (7.0, 13.0)
    elongation: float = 0.35
    wobble: float = 0.12
    edge_px: float = 1.5
    brightness: tuple[float, float] = (0.55, 1.0)
    texture: float = 0.15
    background: float = 0.08
    illumination: float = 0.35
    illumination_period_px: float = 1500.0
    photons: float = 60.0
    read_noise: float = 0.015

    def __post_init__(self) -> None:
        reach = self.radius_px[1] * (1 + self.elongation) * (1 + self.wobble) + 2 * self.edge_px
        # An object must stay inside its 3**dims neighbourhood: its centre lies
        # within (1 - jitter) / 2 of its cell's edge, so it reaches at most
        # cell_px * (1 + (1 - jitter) / 2) past that edge.
        if reach > self.cell_px * (1 + (1 - self.jitter) / 2):
            raise UsageError(
                f"synthetic objects reach {reach:.1f} px but cells are {self.cell_px} px; "
                "use smaller radius_px or larger cell_px"
            )


SPECS = {
    "nuclei": SynthSpec(),
    "cells": SynthSpec(
        cell_px=44,
        density=0.92,
        jitter=0.45,
        radius_px=(13.0, 20.0),
        elongation=0.3,
        wobble=0.15,
        edge_px=2.0,
        brightness=(0.4, 0.8),
        texture=0.25,
    ),
}


def spec_for(kind: str) -> SynthSpec:
    if kind not in SPECS:
        raise UsageError(f"unknown synthetic kind {kind!r}; choose one of {KINDS}")
    return SPECS[kind]


# -- counter-based random numbers --------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-mixed hash of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)))


def _uniform(seed: int, cells: Sequence[np.ndarray], stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (seed, cell index, stream)."""
    with np.errstate(over="ignore"):
        key = np.full(np.broadcast_shapes(*(c.shape for c in cells)), seed, dtype=np.uint64)
        key = _mix(key * np.uint64(0x9E3779B97F4A7C15) + np.uint64(stream))
        for axis, c in enumerate(cells):
            key = _mix(key ^ (c.astype(np.int64).astype(np.uint64) + np.uint64(axis << 40)))
    return ((key >> np.uint64(11)).astype(np.float64) * 2.0**-53).astype(np.float32)


# -- rendering ------------------------------------------------------------------


@dataclass(frozen=True)
class _Objects:
    """Per-cell object parameters, arrays over a (padded) range of cells."""

    centre: list[np.ndarray]  # per axis: centre offset within its cell, px
    rotation: list[list[np.ndarray]]  # [k][i]: row k of the rotation matrix
    inv_radius: list[np.ndarray]  # per rotated axis
    wobble: tuple[np.ndarray, np.ndarray]  # cos / sin weights of the 3rd harmonic
    brightness: np.ndarray
    edge_gain: np.ndarray  # mean radius / edge width: s -> distance in edge widths
    absent: np.ndarray  # 0 where an object exists, a huge penalty where not
    ident: np.ndarray  # instance id (uint32), unique per cell


def _objects(spec: SynthSpec, seed: int, first: Sequence[int], count: Sequence[int],
             grid: Sequence[int]) -> _Objects:
    dims = len(first)
    axes = [np.arange(f, f + n) for f, n in zip(first, count, strict=True)]
    cells = np.meshgrid(*axes, indexing="ij", sparse=True)
    stream = itertools.count()

    def u() -> np.ndarray:
        return _uniform(seed, cells, next(stream))

    present = u() < spec.density
    margin = (1 - spec.jitter) / 2
    centre = [(margin + spec.jitter * u()) * spec.cell_px for _ in range(dims)]
    radius = spec.radius_px[0] + (spec.radius_px[1] - spec.radius_px[0]) * u()
    stretch = 1 + spec.elongation * (2 * u() - 1)
    radii = [radius * stretch, radius / stretch] + [radius] * (dims - 2)
    if dims == 2:
        angle = np.pi * u()
        c, s = np.cos(angle), np.sin(angle)
        rotation = [[c, s], [-s, c]]
    else:
        # A uniformly random unit quaternion gives a uniformly random rotation.
        u1, u2, u3 = u(), 2 * np.pi * u(), 2 * np.pi * u()
        a, b = np.sqrt(1 - u1), np.sqrt(u1)
        w, x, y, z = a * np.sin(u2), a * np.cos(u2), b * np.sin(u3), b * np.cos(u3)
        rotation = [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    phase = 2 * np.pi * u()
    amount = spec.wobble * u()
    low, high = spec.brightness
    ident = np.zeros(np.broadcast_shapes(*(c.shape for c in cells)), dtype=np.uint64)
    for c, n in zip(cells, grid, strict=True):
        ident = ident * np.uint64(n) + (c + 1).astype(np.uint64)
    return _Objects(
        centre=centre,
        rotation=[[np.broadcast_to(v, present.shape) for v in row] for row in rotation],
        inv_radius=[1 / r for r in radii],
        wobble=(amount * np.cos(phase), amount * np.sin(phase)),
        brightness=low + (high - low) * u(),
        edge_gain=radius / spec.edge_px,
        absent=np.where(present, 0.0, 1e6).astype(np.float32),
        ident=np.where(present, ident + np.uint64(1), 0).astype(np.uint32),
    )


def _expand(a: np.ndarray, dims: int) -> np.ndarray:
    """(n0, n1, ...) cell array -> (n0, 1, n1, 1, ...) to broadcast over in-cell axes."""
    return a.reshape(tuple(itertools.chain.from_iterable((n, 1) for n in a.shape[:dims])))


def _illumination(spec: SynthSpec, seed: int, coords: Sequence[np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x111])
    field = np.ones((1,) * len(coords), dtype=np.float32)
    for _ in range(3):
        direction = rng.normal(size=len(coords))
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / (spec.illumination_period_px * rng.uniform(0.7, 1.5))
        arg = sum(k * d * c for d, c in zip(direction, coords, strict=True)) + rng.uniform(0, 6.3)
        field = field + (spec.illumination / 3) * np.sin(arg).astype(np.float32)
    return field


def _texture(spec: SynthSpec, seed: int, coords: Sequence[np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x222])
    tex = np.ones((1,) * len(coords), dtype=np.float32)
    for _ in range(3):
        direction = rng.normal(size=len(coords))
        direction /= np.linalg.norm(direction)
        k = rng.uniform(0.35, 0.8)
        arg = sum(k * d * c for d, c in zip(direction, coords, strict=True)) + rng.uniform(0, 6.3)
        tex = tex + (spec.texture / 3) * np.sin(arg.astype(np.float32))
    return tex


def render(spec: SynthSpec, seed: int, offset: Sequence[int], shape: Sequence[int],
           image_shape: Sequence[int], dtype: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """Render the box ``offset + shape`` of an image: (image, instance labels uint32).

    The result depends only on ``spec``, ``seed``, ``image_shape`` (for instance
    ids) and the box, never on how the image is chunked, except for noise,
    which is drawn per box: render whole chunks to keep it reproducible.
    """
    dims = len(shape)
    cell = spec.cell_px
    first = [o // cell for o in offset]
    last = [-(-(o + n) // cell) for o, n in zip(offset, shape, strict=True)]
    count = [b - a for a, b in zip(first, last, strict=True)]
    grid = [-(-n // cell) + 2 for n in image_shape]
    objects = _objects(spec, seed, [f - 1 for f in first], [n + 2 for n in count], grid)
    local = [np.arange(cell, dtype=np.float32) for _ in range(dims)]
    # Pixel coordinates within their cell, broadcast to (n0, cell, n1, cell, ...).
    inner = []
    for axis in range(dims):
        shp = [1] * (2 * dims)
        shp[2 * axis + 1] = cell
        inner.append(local[axis].reshape(shp))
    full = tuple(itertools.chain.from_iterable((n, cell) for n in count))
    best_s = np.full(full, np.inf, dtype=np.float32)
    best_id = np.zeros(full, dtype=np.uint32)
    intensity = np.zeros(full, dtype=np.float32)
    for step in itertools.product((-1, 0, 1), repeat=dims):
        window = tuple(slice(1 + d, 1 + d + n) for d, n in zip(step, count, strict=True))

        def pick(a: np.ndarray, window: tuple[slice, ...] = window) -> np.ndarray:
            return _expand(a[window], dims)

        delta = [inner[i] - pick(objects.centre[i] + step[i] * cell) for i in range(dims)]
        rotated = [sum(pick(objects.rotation[k][i]) * delta[i] for i in range(dims))
                   for k in range(dims)]
        scaled = [rotated[k] * pick(objects.inv_radius[k]) for k in range(dims)]
        rho2 = sum(x * x for x in scaled) + np.float32(1e-6)
        # 3rd-harmonic wobble of the outline: cos(3t), sin(3t) from the in-plane
        # direction without atan2 (polynomials of cos t, sin t).
        inv = 1 / np.sqrt(scaled[0] * scaled[0] + scaled[1] * scaled[1] + np.float32(1e-6))
        c, s = scaled[0] * inv, scaled[1] * inv
        wc, ws = objects.wobble
        outline = 1 + pick(wc) * (4 * c * c * c - 3 * c) + pick(ws) * (3 * s - 4 * s * s * s)
        dist = np.sqrt(rho2) / outline + pick(objects.absent)
        closer = dist < best_s
        np.copyto(best_s, dist, where=closer)
        np.copyto(best_id, np.broadcast_to(pick(objects.ident), full), where=closer)
        # Edge profile: smoothstep over +-1 edge width around the outline.
        t = np.clip(0.5 + (1 - dist) * pick(objects.edge_gain) * 0.5, 0, 1)
        np.maximum(intensity, pick(objects.brightness) * t * t * (3 - 2 * t), out=intensity)
    region = tuple(n * cell for n in count)
    crop = tuple(slice(o - f * cell, o - f * cell + n)
                 for o, f, n in zip(offset, first, shape, strict=True))
    labels = np.where(best_s < 1, best_id, 0).reshape(region)[crop]
    intensity = intensity.reshape(region)[crop]
    coords = [
        (o + np.arange(n, dtype=np.float32)).reshape([n if a == i else 1 for a in range(dims)])
        for i, (o, n) in enumerate(zip(offset, shape, strict=True))
    ]
    signal = (spec.background + intensity * _texture(spec, seed, coords)) * _illumination(
        spec, seed, coords
    )
    rng = np.random.default_rng([seed, 0x333, *offset])
    counts = rng.poisson(np.maximum(signal, 0) * spec.photons).astype(np.float32) / spec.photons
    counts += rng.normal(0, spec.read_noise, size=counts.shape).astype(np.float32)
    top = 255.0 if dtype == "uint8" else 4095.0  # uint16: a 12-bit camera
    image = np.clip(np.rint(counts * (0.6 * top)), 0, top).astype(dtype)
    return image, labels


# -- writing --------------------------------------------------------------------


def _chunk_boxes(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[Box]:
    image = Box.of_shape(shape)
    counts = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
    for index in itertools.product(*(range(n) for n in counts)):
        offset = tuple(i * c for i, c in zip(index, chunks, strict=True))
        yield Box(offset, tuple(chunks)).intersect(image)


def generate_image(
    image_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    shape: Sequence[int],
    chunks: Sequence[int] | None = None,
    seed: int = 0,
    kind: str = "nuclei",
    dtype: str = "uint8",
    workers: int | None = None,
) -> None:
    """Write a synthetic image and its instance ground truth as two zarr v3 arrays.

    Args:
        image_path: Store for the image (``dtype``), created or overwritten.
        truth_path: Store for the instance labels (uint32, 0 = background).
        shape: ``(y, x)`` or ``(z, y, x)``.
        chunks: Chunk shape of both arrays (default 1024 per 2D axis, 128 in 3D).
        seed: Everything is a function of the seed and the chunk position.
        kind: ``"nuclei"`` or ``"cells"``.
        dtype: ``"uint8"`` or ``"uint16"`` (12-bit range).
        workers: Threads rendering chunks (default: CPU count).
    """
    import zarr

    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise UsageError(f"synthetic image shape must be 2D or 3D and positive, got {shape}")
    if dtype not in DTYPES:
        raise UsageError(f"synthetic dtype must be one of {DTYPES}, got {dtype!r}")
    spec = spec_for(kind)
    default = 1024 if len(shape) == 2 else 128
    chunks = tuple(int(c) for c in chunks) if chunks else (default,) * len(shape)
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    names = ("y", "x") if len(shape) == 2 else ("z", "y", "x")
    attrs: dict[str, Any] = {"unet_tiles_synth": {"seed": seed, "kind": kind,
                                                  "shape": list(shape)}}
    image = zarr.create_array(str(image_path), shape=shape, chunks=chunks, dtype=dtype,
                              dimension_names=names, overwrite=True, attributes=attrs)
    truth = zarr.create_array(str(truth_path), shape=shape, chunks=chunks, dtype="uint32",
                              dimension_names=names, overwrite=True, attributes=attrs)

    def one(box: Box) -> None:
        pixels, labels = render(spec, seed, box.offset, box.shape, shape, dtype)
        image[box.to_slices()] = pixels
        truth[box.to_slices()] = labels

    # numpy releases the GIL in its array loops, so threads render in parallel
    # while each holds only its own chunk.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in pool.map(one, _chunk_boxes(shape, chunks)):
            pass
    logger.info("wrote synthetic %s image %s (%s) and truth %s", kind, image_path, shape,
                truth_path)


def generate_arrays(shape: Sequence[int], seed: int = 0, kind: str = "nuclei",
                    dtype: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic (image, instance labels) pair in memory, for tests."""
    shape = tuple(int(n) for n in shape)
    return render(spec_for(kind), seed, (0,) * len(shape), shape, shape, dtype)


def megapixels(shape: Sequence[int]) -> float:
    return math.prod(shape) / 1e6

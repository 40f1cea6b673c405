"""The demo's preview: the image and its labels side by side, across a block corner.

Only the preview region is held in memory. It is centred on a chunk corner,
which is also a block corner (blocks are unions of output chunks), so it shows
the seams the tiler must not leave::

    +----------------+----------------+
    | image          | labels overlay |     dashed lines: chunk / block borders
    |      :         |      :         |
    |  ....+....     |  ....+....     |
    |      :         |      :         |
    +----------------+----------------+
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import os

PREVIEW_PX = 512


def open_zarr(path: str | os.PathLike[str], name: str | None = None) -> Any:
    import zarr

    node: Any = zarr.open(str(path), mode="r")
    return node[name] if name is not None else node


def preview_region(shape: tuple[int, ...], chunk_px: int,
                   size_px: int = PREVIEW_PX) -> tuple[slice, ...]:
    """A square region centred on the chunk corner nearest the image centre."""
    region = []
    for n in shape:
        edge = min(size_px, n)
        corner = max(chunk_px, round(n / 2 / chunk_px) * chunk_px) if n > chunk_px else n // 2
        start = int(np.clip(corner - edge // 2, 0, n - edge))
        region.append(slice(start, start + edge))
    return tuple(region)


def _colours(count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    colours = rng.integers(60, 256, size=(count + 1, 3)).astype(np.float32)
    colours[0] = 0
    return colours


def render_preview(image: np.ndarray, labels: np.ndarray, origin: tuple[int, ...],
                   chunk_px: int) -> np.ndarray:
    """RGB uint8 ``(h, 2w, 3)``: the image, and the image with labelled objects overlaid."""
    from scipy import ndimage

    from unet_tiles.training.metrics import instances_from_classes

    low, high = np.percentile(image, (0.5, 99.8))
    grey = np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6) * 255, 0, 255)
    left = np.repeat(grey[..., None], 3, axis=2)
    instances = instances_from_classes(labels)
    colour = _colours(int(instances.max()))[instances]
    inside = (instances > 0)[..., None]
    right = np.where(inside, 0.45 * left + 0.55 * colour, left)
    edges = instances != ndimage.grey_erosion(instances, size=3)
    right[edges & (instances > 0)] = (255, 255, 0)
    # Chunk (and so block) borders, dashed, on both panels.
    for axis in (0, 1):
        for k in range(len(labels)):
            pos = origin[axis] + k
            if pos % chunk_px == 0 and k > 0:
                dash = (np.arange(labels.shape[1 - axis]) // 6) % 2 == 0
                for panel in (left, right):
                    line = panel[k] if axis == 0 else panel[:, k]
                    line[dash] = (255, 64, 64)
    return np.concatenate([left, right], axis=1).astype(np.uint8)


def write_preview(path: str | os.PathLike[str], image_path: str | os.PathLike[str],
                  labels_path: str | os.PathLike[str], region: tuple[slice, ...],
                  chunk_px: int) -> Path:
    from PIL import Image

    pixels = np.asarray(open_zarr(image_path)[region])
    labels = np.asarray(open_zarr(labels_path)[region])
    rgb = render_preview(pixels, labels, tuple(s.start for s in region), chunk_px)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out)
    return out

"""The demo: generate a microscope image, segment it, show and score the result.

Everything the demo computes over the whole image streams chunk by chunk
(generation, accuracy); only the preview region is held in memory. The preview
is centred on a chunk corner, which is also a block corner (blocks are unions
of output chunks), so it shows the seams the tiler must not leave::

    +----------------+----------------+
    | image          | labels overlay |     dashed lines: chunk / block borders
    |      :         |      :         |
    |  ....+....     |  ....+....     |
    |      :         |      :         |
    +----------------+----------------+
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    import os

logger = logging.getLogger(__name__)

DEFAULT_SIZE_PX = 8192
PREVIEW_PX = 512
MIN_SIZE_PX = 64


def demo_model_dir() -> Path:
    """The small demo model shipped inside the package."""
    return Path(str(resources.files("unet_tiles") / "demo_model"))


def demo_chunks(size_px: int) -> int:
    """Chunk edge for a demo image: 1024 for large images, smaller ones still get several."""
    if size_px >= 4096:
        return 1024
    return max(64, min(256, size_px // 2))


@dataclass(frozen=True)
class Generated:
    image: Path
    truth: Path
    shape: tuple[int, ...]
    chunk_px: int
    seconds: float


def generate(workdir: str | os.PathLike[str], size_px: int = DEFAULT_SIZE_PX, seed: int = 0,
             kind: str = "nuclei") -> Generated:
    """Write ``workdir/image.zarr`` (uint8) and ``workdir/truth.zarr`` (instance ids)."""
    from unet_tiles.synth import generate_image

    if size_px < MIN_SIZE_PX:
        raise UsageError(f"--size {size_px} is too small for the demo; use at least {MIN_SIZE_PX}")
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    chunk = demo_chunks(size_px)
    shape = (size_px, size_px)
    started = time.perf_counter()
    generate_image(root / "image.zarr", root / "truth.zarr", shape, (chunk, chunk), seed, kind)
    return Generated(root / "image.zarr", root / "truth.zarr", shape, chunk,
                     time.perf_counter() - started)


@dataclass(frozen=True)
class Accuracy:
    """Foreground IoU over the whole image; instance AP at IoU 0.5 on the preview region."""

    iou_foreground: float
    ap50_preview: float
    objects_preview: int


def _open(path: str | os.PathLike[str], name: str | None = None):  # type: ignore[no-untyped-def]
    import zarr

    node = zarr.open(str(path), mode="r")
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


def accuracy(labels_path: str | os.PathLike[str], truth_path: str | os.PathLike[str],
             region: tuple[slice, ...]) -> Accuracy:
    """Score predicted classes against the generated instance ground truth."""
    from unet_tiles.metrics import instances_from_classes, iou_from_confusion, match_counts

    labels = _open(labels_path)
    truth = _open(truth_path)
    chunk = truth.chunks
    matrix = np.zeros((2, 2), dtype=np.int64)
    # Streamed per chunk: the whole image never needs to fit in memory.
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


def _colours(count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    colours = rng.integers(60, 256, size=(count + 1, 3)).astype(np.float32)
    colours[0] = 0
    return colours


def render_preview(image: np.ndarray, labels: np.ndarray, origin: tuple[int, ...],
                   chunk_px: int) -> np.ndarray:
    """RGB uint8 ``(h, 2w, 3)``: the image, and the image with labelled objects overlaid."""
    from scipy import ndimage

    from unet_tiles.metrics import instances_from_classes

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

    pixels = np.asarray(_open(image_path)[region])
    labels = np.asarray(_open(labels_path)[region])
    rgb = render_preview(pixels, labels, tuple(s.start for s in region), chunk_px)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out)
    return out

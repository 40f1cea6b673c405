"""The demo's image: a generated microscope image with ground truth, and the shipped model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    import os

DEFAULT_SIZE_PX = 8192
MIN_SIZE_PX = 64


def demo_model_dir() -> Path:
    """The small demo model shipped inside the package."""
    return Path(str(resources.files("unet_tiles.demo") / "model"))


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
    from unet_tiles.demo.synth import generate_image

    if size_px < MIN_SIZE_PX:
        raise UsageError(f"`size` {size_px} is too small for the demo; use at least {MIN_SIZE_PX}")
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    chunk = demo_chunks(size_px)
    shape = (size_px, size_px)
    started = time.perf_counter()
    generate_image(root / "image.zarr", root / "truth.zarr", shape, (chunk, chunk), seed, kind)
    return Generated(root / "image.zarr", root / "truth.zarr", shape, chunk,
                     time.perf_counter() - started)

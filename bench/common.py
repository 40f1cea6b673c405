"""Helpers shared by the benchmarks (not part of the package)."""

from __future__ import annotations

import tempfile
from pathlib import Path

DEMO_MODEL = Path(__file__).resolve().parent.parent / "unet_tiles" / "demo" / "model"


def bench_model(model: str | None, work: Path) -> str:
    """The model to measure: ``model``, else the shipped demo model, else one like it."""
    if model:
        return model
    if (DEMO_MODEL / "weights.safetensors").is_file():
        return str(DEMO_MODEL)
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    config = UNetConfig(depth=3, base_channels=8, input_scale=(1 / 255,))
    return str(save_model(build_unet(config, seed=0), work / "model"))


def synthetic_input(work: Path, size: int, chunk: int = 1024) -> str:
    """A generated nuclei image of ``size`` x ``size`` uint8 as a zarr v3 array."""
    from unet_tiles.demo.synth import generate_image

    path = work / f"image{size}.zarr"
    if not (path / "zarr.json").exists():
        generate_image(path, work / f"truth{size}.zarr", (size, size), chunks=(chunk, chunk))
    return str(path)


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))

"""unet-tiles: seamless overlap-tile U-Net segmentation of images larger than memory.

Importing this package loads neither torch nor distributed; they are imported
by the functions that need them. The data flow, module by module, is in
``docs/architecture.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from unet_tiles.engine.blocks import RunSummary
    from unet_tiles.model.unet import UNet


def load_model(directory: str, device: str = "cpu") -> UNet:
    """Load ``DIR/config.json`` + ``DIR/weights.safetensors`` as a ``UNet`` in eval mode."""
    from unet_tiles.model.files import load_model as _load

    return _load(directory, device)


def segment(input: str, output: str, model_dir: str, *, cluster: str = "local",
            workers: int | None = None, threads_per_worker: int | None = None,
            progress: bool | None = None, **options: Any) -> RunSummary:
    """Segment one image, as ``unet-tiles segment`` does; a rerun resumes.

    ``options`` are ``unet_tiles.engine.run.SegmentRequest`` fields: output_kind,
    dtype, block_size, tile_size, batch_size, axes, device, overwrite,
    allow_missing_chunks. ``cluster``: ``local``, ``cpu``, ``cuda`` or a scheduler
    address.
    """
    from unet_tiles.engine import run

    request = run.SegmentRequest(input=input, output=output, model_dir=model_dir, **options)
    return run.segment(request, cluster=cluster, workers=workers,
                       threads_per_worker=threads_per_worker, progress=progress)


__all__ = ["__version__", "load_model", "segment"]

"""unet-tiles: seamless overlap-tile U-Net segmentation of images larger than memory.

Importing this package loads neither torch nor distributed; they are imported
by the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from unet_tiles.model import UNet


def load_model(directory: str, device: str = "cpu") -> UNet:
    """Load ``DIR/config.json`` + ``DIR/weights.safetensors`` as a ``UNet`` in eval mode."""
    from unet_tiles.modelio import load_model as _load

    return _load(directory, device)


__all__ = ["__version__", "load_model"]

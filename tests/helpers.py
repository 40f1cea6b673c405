"""Functions the tests share: zarr images on disk, the whole-image reference, softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path


def write_zarr(path: Path | str, data: np.ndarray, chunks: tuple[int, ...],
               zarr_format: int = 3, dimension_names: tuple[str, ...] | None = None,
               write_empty_chunks: bool = True) -> str:
    """Write ``data`` as a zarr array; every chunk is stored unless told otherwise
    (zarr by default omits chunks equal to the fill value, which unet-tiles
    reports as "input incomplete")."""
    import zarr

    kwargs: dict[str, Any] = {"config": {"write_empty_chunks": write_empty_chunks}}
    if dimension_names is not None and zarr_format == 3:
        kwargs["dimension_names"] = dimension_names
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                              zarr_format=zarr_format, overwrite=True, **kwargs)
    array[...] = data
    return str(path)


def reference_logits(model_dir: Path | str, image: np.ndarray) -> np.ndarray:
    """The model run once on the whole image, mirror-padded as DESIGN.md invariant 1 says.

    ``image`` is ``(C, *spatial)``; returns logits ``(K, *spatial)``.
    """
    import torch

    from unet_tiles import load_model

    model = load_model(str(model_dir))
    pads = [(0, 0)]
    for n, h in zip(image.shape[1:], model.halo, strict=True):
        pads.append((h, model.valid_size(n + 2 * h) - n - h))
    padded = np.pad(image.astype(np.float32), pads, mode="reflect")
    with torch.inference_mode():
        out = model(torch.from_numpy(padded)[None])[0]
    if model.config.padding == "same":
        out = out[(slice(None), *(slice(h, None) for h in model.halo))]
    crop = (slice(None), *(slice(0, n) for n in image.shape[1:]))
    return out[crop].numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)

"""Shared fixtures: tiny seeded models on disk, zarr images, a real dask cluster."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Write (once per config) a seeded tiny model directory and return its path."""
    from unet_tiles.model import UNetConfig, build_unet
    from unet_tiles.modelio import save_model

    made: dict[tuple[Any, ...], Path] = {}

    def make(**kwargs: Any) -> Path:
        kwargs = {"depth": 2, "base_channels": 4, "classes": 3, "seed": 0, **kwargs}
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            seed = kwargs.pop("seed")
            model = build_unet(UNetConfig(**kwargs), seed=seed)
            made[key] = save_model(model, tmp_path_factory.mktemp("model"))
        return made[key]

    return make


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


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    """A real LocalCluster with two worker processes, shared by the session."""
    from unet_tiles.cluster import connect

    with connect("cpu", workers=2, threads_per_worker=1) as (dask_client, _info):
        yield dask_client


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

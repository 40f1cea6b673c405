"""validate(): the model is loaded once per process while its files are unchanged."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from helpers import write_zarr

from unet_tiles.engine.run import SegmentRequest, _load_model_once, validate

if TYPE_CHECKING:
    from pathlib import Path


def test_model_is_loaded_once_and_reloaded_when_its_files_change(
    tmp_path: Path, make_model: Any
) -> None:
    from unet_tiles import load_model
    from unet_tiles.model.files import save_model

    model_dir = save_model(load_model(str(make_model(depth=1))), tmp_path / "model")
    src = write_zarr(tmp_path / "in.zarr", np.zeros((40, 40), dtype="uint8"), (20, 20))
    request = SegmentRequest(src, str(tmp_path / "out.zarr"), str(model_dir))
    first = validate(request)
    loads = _load_model_once.cache_info().misses
    again = validate(request)
    assert _load_model_once.cache_info().misses == loads
    assert again.job.model_hash == first.job.model_hash
    changed = load_model(str(model_dir))
    with __import__("torch").no_grad():
        changed.head.bias.add_(1.0)
    save_model(changed, model_dir)
    os.utime(model_dir / "weights.safetensors", ns=(1, 1))  # a new stamp even within one tick
    assert validate(request).job.model_hash != first.job.model_hash
    assert _load_model_once.cache_info().misses == loads + 1

"""The CUDA path: only where a GPU is present (skipped cleanly elsewhere)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import reference_logits, softmax, write_zarr

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_float32_equals_whole_image_and_amp_agrees(tmp_path: Path, make_model: Any) -> None:
    from unet_tiles.engine.run import SegmentRequest, validate

    model = make_model(depth=3, base_channels=8, input_scale=(1 / 255,))
    image = (np.random.default_rng(0).random((300, 411)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (128, 128))
    expected = softmax(reference_logits(model, image[None]))
    for name, precision in (("fp32", "float32"), ("amp", "auto")):
        from dataclasses import replace

        run = validate(SegmentRequest(src, str(tmp_path / f"{name}.zarr"), str(model),
                                      output_kind="both", dtype="float32", block_size=128,
                                      device="cuda"))
        run = replace(run, job=replace(run.job, precision=precision))
        run.segment()
        out = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")
        diff = np.abs(out["probabilities"][...] - expected).max()
        agree = (out["labels"][...] == expected.argmax(0)).mean()
        print(f"{name}: max |dp| {diff:.2e}, labels agree {agree:.5f}")
        if precision == "auto":
            assert diff < 5e-2
            assert agree > 0.995
        else:
            # TF32 convolutions on Hopper round more than the CPU reference.
            assert diff < 5e-3
            assert agree > 0.999


def test_local_cluster_is_cuda_with_gpu_resources(tmp_path: Path, make_model: Any) -> None:
    from unet_tiles import segment

    model = make_model(depth=2)
    image = (np.random.default_rng(1).random((500, 700)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (256, 256))
    summary = segment(src, str(tmp_path / "out.zarr"), str(model), cluster="local",
                      progress=False)
    assert summary.blocks_done == summary.blocks_total
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"))[...]
    expected = softmax(reference_logits(model, image[None])).argmax(0)
    assert (labels == expected).mean() > 0.999


def test_workers_sharing_one_gpu(tmp_path: Path, make_model: Any) -> None:
    from unet_tiles import segment

    model = make_model(depth=2)
    image = (np.random.default_rng(2).random((600, 500)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (256, 256))
    summary = segment(src, str(tmp_path / "out.zarr"), str(model), cluster="cuda",
                      workers=3, block_size=256, progress=False)
    assert summary.blocks_done == summary.blocks_total == 6
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"))[...]
    expected = softmax(reference_logits(model, image[None])).argmax(0)
    assert (labels == expected).mean() > 0.999


def test_workers_sharing_a_gpu_are_warmed_on_their_gpu(tmp_path: Path, make_model: Any) -> None:
    """More worker processes than GPUs pick their GPU by name inside a task; the warm-up
    runs outside one and is given the name, so each has its CUDA context and model
    before its first block."""
    from dataclasses import replace

    from unet_tiles.engine.cluster import connect
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.engine.warm import warm_workers

    image = (np.random.default_rng(3).random((300, 300)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (128, 128))
    run = validate(SegmentRequest(src, str(tmp_path / "out.zarr"), str(make_model(depth=2))))

    def state() -> tuple[bool, int]:
        import torch

        from unet_tiles.pipeline.predict import cached_model

        return torch.cuda.is_initialized(), cached_model.cache_info().currsize

    with connect("cuda", workers=torch.cuda.device_count() + 1) as (client, info):
        assert info.device == "cuda:worker"
        warm_workers(client, replace(run.job, device=info.device))
        assert set(client.run(state).values()) == {(True, 1)}

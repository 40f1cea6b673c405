"""Invariant 1: the tiled result equals the model run once on the whole padded image.

Drawn over image shapes (down to 1 pixel, far below the halo), chunkings, block
and tile sizes, 2D and 3D, through the real reader, planner, predictor and
writer (serial engine here; tests/test_segment.py runs the dask cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from helpers import reference_logits, softmax, write_zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unet_tiles.engine.run import SegmentRequest, validate

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

SETTINGS = settings(
    max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def segment_serial(tmp: Path, image: np.ndarray, chunks: tuple[int, ...], model: Path,
                   **request: Any) -> zarr.Group:
    src = write_zarr(tmp / "in.zarr", image, chunks)
    out = tmp / "out.zarr"
    run = validate(SegmentRequest(src, str(out), str(model), output_kind="both",
                                  dtype="float32", overwrite=True, **request))
    run.segment()
    return zarr.open_group(str(out), mode="r")


@given(
    height=st.integers(1, 90), width=st.integers(1, 90),
    chunk=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    block=st.sampled_from([None, 4, 16, 24, 40, 64]),
    tile=st.sampled_from([8, 16, 40, 128]),
    depth=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "int16"]),
)
@SETTINGS
def test_valid_2d_tiling_equals_whole_image(
    tmp_path_factory: pytest.TempPathFactory, make_model: Any, height: int, width: int,
    chunk: tuple[int, int], block: int | None, tile: int, depth: int, dtype: str,
) -> None:
    model = make_model(depth=depth)
    divisor = 2**depth
    if block is not None and block < divisor:
        block = divisor
    rng = np.random.default_rng(height * 1000 + width)
    image = (rng.random((height, width)) * 200).astype(dtype)
    out = segment_serial(tmp_path_factory.mktemp("s"), image, chunk, model,
                         block_size=block, tile_size=max(tile, divisor))
    expected = softmax(reference_logits(model, image[None]))
    got = out["probabilities"][...]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert (out["labels"][...] == expected.argmax(0)).mean() > 0.999


@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 26), st.integers(1, 26)),
    block=st.sampled_from([None, 8, 16]),
)
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_valid_3d_tiling_equals_whole_volume(
    tmp_path_factory: pytest.TempPathFactory, make_model: Any, shape: tuple[int, int, int],
    block: int | None,
) -> None:
    model = make_model(dims=3, depth=1, base_channels=2)
    rng = np.random.default_rng(sum(shape))
    image = (rng.random(shape) * 100).astype("uint8")
    out = segment_serial(tmp_path_factory.mktemp("s3"), image, (7, 9, 11), model,
                         block_size=block, tile_size=8)
    expected = softmax(reference_logits(model, image[None]))
    assert np.abs(out["probabilities"][...] - expected).max() <= 1e-4


def test_channel_axis_between_spatial_axes_for_a_3d_model(tmp_path: Path,
                                                           make_model: Any) -> None:
    model = make_model(dims=3, depth=1, base_channels=2, in_channels=2)
    rng = np.random.default_rng(9)
    image = (rng.random((11, 2, 14, 17)) * 255).astype("uint8")  # z c y x
    out = segment_serial(tmp_path, image, (4, 1, 8, 8), model, block_size=8, tile_size=8,
                         axes="zcyx")
    expected = softmax(reference_logits(model, image.transpose(1, 0, 2, 3)))
    assert out["probabilities"].shape == expected.shape
    assert np.abs(out["probabilities"][...] - expected).max() <= 1e-4


def test_multichannel_timeseries_with_2d_model_runs_plane_by_plane(
    tmp_path: Path, make_model: Any
) -> None:
    model = make_model(in_channels=2)
    rng = np.random.default_rng(5)
    image = (rng.random((2, 2, 3, 37, 53)) * 255).astype("uint8")  # t c z y x
    out = segment_serial(tmp_path, image, (1, 2, 2, 16, 16), model, block_size=16)
    probs = out["probabilities"][...]
    assert probs.shape == (2, 3, 3, 37, 53)  # t z c y x: iterated axes, then classes
    assert out["labels"].shape == (2, 3, 37, 53)
    for t in range(2):
        for z in range(3):
            expected = softmax(reference_logits(model, image[t, :, z]))
            assert np.abs(probs[t, z] - expected).max() <= 1e-4


# A same-padding model sees zero padding inside every tile, so tiles differ
# slightly from the whole-image run even with a full receptive-field halo.
# Measured here (README, "Same padding"): max |dp| 3.0e-3 at depth 2, 4.1e-4 at
# depth 3, mean below 1e-4, labels agreeing on > 99.9 % of pixels.
SAME_PADDING_MAX_ABS_DIFF = 1e-2


def test_same_padding_residual_is_small(tmp_path: Path, make_model: Any) -> None:
    model = make_model(depth=2, padding="same", base_channels=8, seed=2,
                       input_scale=(1 / 255,))
    rng = np.random.default_rng(0)
    image = (rng.random((197, 231)) * 255).astype("uint8")
    out = segment_serial(tmp_path, image, (32, 32), model, block_size=64, tile_size=16)
    expected = softmax(reference_logits(model, image[None]))
    diff = np.abs(out["probabilities"][...] - expected)
    print(f"same padding: max |dp| = {diff.max():.2e}, mean = {diff.mean():.2e}")
    assert diff.max() <= SAME_PADDING_MAX_ABS_DIFF
    assert (out["labels"][...] == expected.argmax(0)).mean() > 0.999

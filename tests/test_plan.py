"""Block plans are pure geometry: check them over drawn shapes, chunks and models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import MODELS, plans

from unet_tiles.pipeline.plan import BlockPlan, make_plan, output_chunks, reflect_indices


@given(plans())
@settings(max_examples=300, deadline=None)
def test_blocks_partition_the_output_in_whole_chunks(plan: BlockPlan) -> None:
    written = np.zeros(plan.shape, dtype=np.int32)
    for block in plan:
        for axis, (o, s) in enumerate(zip(block.write.offset, block.write.shape, strict=True)):
            # Whole chunks: starts on a chunk edge, ends on one or at the image end.
            assert o % plan.chunks[axis] == 0
            assert (o + s) % plan.chunks[axis] == 0 or o + s == plan.shape[axis]
        written[block.write.to_slices()] += 1
    assert (written == 1).all()


@given(plans())
@settings(max_examples=300, deadline=None)
def test_tiles_sit_on_the_pooling_grid_and_cover_each_block(plan: BlockPlan) -> None:
    lead = len(plan.shape) - plan.dims
    for block in itertools.islice(plan, 20):
        for k, tile in enumerate(block.tiles):
            a = block.write.offset[lead + k]
            b = a + block.write.shape[lead + k]
            assert tile.start % plan.divisor == 0
            assert tile.stride % plan.divisor == 0
            assert tile.start <= a
            assert tile.start + tile.count * tile.stride >= b
            # The tile input is valid and has the halo on both sides of its stride.
            assert plan.valid_size(tile.size_in) == tile.size_in
            assert tile.size_in >= tile.stride + 2 * plan.halo[k]
            # The read window is exactly the union of the tile inputs.
            assert block.read.offset[lead + k] == tile.start - plan.halo[k]
            assert block.read.shape[lead + k] == (tile.count - 1) * tile.stride + tile.size_in


@pytest.mark.parametrize(("depth", "padding"), list(MODELS))
def test_valid_size_rule_matches_the_model(depth: int, padding: str) -> None:
    model = MODELS[(depth, padding)]
    plan = make_plan((10, 10), 2, (10, 10), (10, 10), model, 64)
    assert [plan.valid_size(n) for n in range(1, 500)] == [
        model.valid_size(n) for n in range(1, 500)
    ]


@given(st.integers(1, 12), st.integers(0, 60), st.integers(0, 60))
def test_reflect_indices_equal_numpy_reflect_pad(n: int, before: int, after: int) -> None:
    image = np.arange(n) * 3 + 1
    expected = np.pad(image, (before, after), mode="reflect")
    assert (image[reflect_indices(-before, n + after, n)] == expected).all()


def test_block_shape_must_be_whole_chunks() -> None:
    with pytest.raises(ValueError, match="not a multiple of chunks"):
        BlockPlan((100, 100), (30, 30), (50, 50), 2, (8, 8), 2, 64, 38)


def test_output_chunks_divide_the_block() -> None:
    assert output_chunks((5000, 5000), (100, 3000), 2, None) == (400, 750)
    chunks = output_chunks((5000, 5000), (512, 512), 2, 1000)
    assert chunks == (500, 500)
    assert output_chunks((3, 5000, 5000), (1, 512, 512), 2, None) == (1, 512, 512)

"""Hypothesis strategies the tests share: block plans over drawn geometry."""

from __future__ import annotations

from hypothesis import strategies as st

from unet_tiles.model.unet import UNetConfig, build_unet
from unet_tiles.pipeline.geometry import Box
from unet_tiles.pipeline.plan import BlockPlan, output_chunks
from unet_tiles.pipeline.plan import block_shape as make_block_shape

# Tiny models of every depth and padding: their geometry, not their weights, matters.
MODELS = {
    (depth, padding): build_unet(UNetConfig(depth=depth, base_channels=1, padding=padding))
    for depth in (1, 2, 3, 4)
    for padding in ("valid", "same")
}


@st.composite
def plans(draw: st.DrawFn) -> BlockPlan:
    dims = draw(st.sampled_from([2, 3]))
    lead = draw(st.integers(0, 5 - dims - 1))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(lead)) + tuple(
        draw(st.integers(1, 300)) for _ in range(dims)
    )
    in_chunks = tuple(draw(st.integers(1, 400)) for _ in shape)
    block = draw(st.one_of(st.none(), st.integers(16, 700)))
    model = MODELS[(draw(st.sampled_from([1, 2, 3, 4])), draw(st.sampled_from(["valid", "same"])))]
    chunks = output_chunks(shape, in_chunks, dims, block)
    blocks = make_block_shape(shape, chunks, dims, block, 256)
    tile = draw(st.integers(16, 600))
    halo = (model.halo[0],) * dims
    return BlockPlan(shape, chunks, blocks, dims, halo, model.divisor, tile,
                     model.valid_size(1))




def boxes(ndim: int, extent: int = 50) -> st.SearchStrategy[Box]:
    """Boxes of ``ndim`` axes, offsets possibly negative (a read window leaves the image)."""
    return st.builds(Box, st.tuples(*[st.integers(-extent, extent)] * ndim),
                     st.tuples(*[st.integers(0, extent)] * ndim))

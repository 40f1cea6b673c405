"""A block's read window against numpy: mirrored at the border, channels first, dtypes kept
or widened, NaN/Inf read as 0, missing chunks named (invariant 6)."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import MODELS
from zarr.storage import LocalStore, WrapperStore

from unet_tiles.errors import InputIncompleteError
from unet_tiles.pipeline.chunk_cache import ChunkCache
from unet_tiles.pipeline.plan import make_plan
from unet_tiles.pipeline.source import ImageSource, open_source
from unet_tiles.pipeline.window import (
    chunk_keys,
    input_region,
    missing_chunks,
    read_region,
    read_window,
)

if TYPE_CHECKING:
    from pathlib import Path

    from unet_tiles.pipeline.plan import Block, BlockPlan

MODEL = MODELS[(2, "valid")]  # halo 20, pooling grid 4: geometry only, no forward pass


def plan_for(source: ImageSource, block: int, tile: int = 16, dims: int = 2,
             model: object = MODEL) -> BlockPlan:
    out_axes = source.axes.replace("c", "")
    shape = tuple(source.axis_size(a) for a in out_axes)
    lead = len(shape) - dims
    chunks = (1,) * lead + (block,) * dims
    return make_plan(shape, dims, chunks, chunks, model, tile)


def numpy_window(image_chw: np.ndarray, block: Block) -> np.ndarray:
    """The block's read box cut from the image mirror-padded by numpy (far enough)."""
    spatial = block.read.spatial(block.dims)
    pad = max(max(-o for o in spatial.offset), max(
        e - n for e, n in zip(spatial.end, image_chw.shape[1:], strict=True)), 0)
    padded = np.pad(image_chw, [(0, 0)] + [(pad, pad)] * block.dims, mode="reflect")
    return padded[(slice(None), *spatial.relative_to((-pad,) * block.dims).to_slices())]


def test_every_block_equals_numpy_reflect_pad(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (70, 90)).astype(np.uint8)
    source = open_source(write_zarr(tmp_path / "in.zarr", image, (32, 32)))
    array = source.open()
    plan = plan_for(source, 32)
    assert plan.grid == (3, 3)
    at_border = 0
    for block in plan:
        window = read_window(array, source, block)
        assert window.shape == (1, *block.read.shape)
        assert window.dtype == np.uint8
        np.testing.assert_array_equal(window, numpy_window(image[None], block))
        at_border += any(o < 0 for o in block.read.offset) or any(
            e > n for e, n in zip(block.read.end, image.shape, strict=True))
    assert at_border == 9  # with a 20 px halo, every block of this image leaves it


def test_3d_blocks_mirror_only_the_axes_that_leave_the_volume(tmp_path: Path) -> None:
    from unet_tiles.model.unet import UNetConfig, build_unet

    volume = np.random.default_rng(3).integers(0, 255, (20, 60, 100)).astype(np.uint8)
    source = open_source(write_zarr(tmp_path / "in.zarr", volume, (20, 32, 32)))
    model = build_unet(UNetConfig(depth=1, base_channels=1, dims=3))
    plan = plan_for(source, 32, tile=16, dims=3, model=model)
    mixed = 0
    for block in plan:
        window = read_window(source.open(), source, block)
        np.testing.assert_array_equal(window, numpy_window(volume[None], block))
        leaves = [o < 0 or e > n for o, e, n in
                  zip(block.read.offset, block.read.end, volume.shape, strict=True)]
        mixed += any(leaves) and not all(leaves)
    assert mixed > 0  # blocks read as they are along one axis and mirrored along another


@pytest.mark.parametrize("shape", [(5, 3), (1, 7), (2, 2), (1, 1)])
def test_window_far_larger_than_a_tiny_image(tmp_path: Path, shape: tuple[int, int]) -> None:
    image = (np.arange(np.prod(shape)).reshape(shape) * 7 + 1).astype(np.int16)
    source = open_source(write_zarr(tmp_path / "tiny.zarr", image, shape))
    model = MODELS[(3, "valid")]  # halo 44: the window is ~30x the image per axis
    plan = plan_for(source, 256, tile=64, model=model)
    (block,) = list(plan)
    assert block.read.shape[0] >= 20 * shape[0]
    region, takes = input_region(source, block)
    # Only the image is read, however large the window.
    assert region == (slice(0, shape[0]), slice(0, shape[1]))
    assert [len(t) for t in takes] == list(block.read.shape)
    window = read_window(source.open(), source, block)
    assert window.dtype == np.int16
    np.testing.assert_array_equal(window, numpy_window(image[None], block))


def test_inside_the_image_the_region_is_the_read_box(tmp_path: Path) -> None:
    image = np.random.default_rng(1).random((300, 300)).astype(np.float32)
    source = open_source(write_zarr(tmp_path / "big.zarr", image, (64, 64)))
    plan = plan_for(source, 64)
    block = plan.block((2, 1))
    assert all(o >= 0 for o in block.read.offset)
    assert all(e <= 300 for e in block.read.end)
    region, takes = input_region(source, block)
    assert region == block.read.to_slices()
    for take, extent in zip(takes, block.read.shape, strict=True):
        np.testing.assert_array_equal(take, np.arange(extent))
    window = read_window(source.open(), source, block)
    np.testing.assert_array_equal(window[0], image[block.read.to_slices()])


def test_border_region_is_the_span_of_the_mirrored_indices(tmp_path: Path) -> None:
    image = np.zeros((100, 100), dtype=np.uint8)
    source = open_source(write_zarr(tmp_path / "in.zarr", image, (32, 32)))
    block = plan_for(source, 32).block((0, 3))  # top right: leaves the image up and right
    region, takes = input_region(source, block)
    (y0, y1), (x0, x1) = zip(block.read.offset, block.read.end, strict=True)
    assert y0 < 0
    assert x1 > 100
    # Mirrored: row -k is row k, column 100 + k is column 98 - k.
    assert region[0] == slice(0, y1)
    assert region[1] == slice(x0, 100)
    assert takes[0][0] == -y0
    assert takes[1][-1] + x0 == 98 - (x1 - 1 - 100)


@pytest.mark.parametrize("axes", ["cyx", "zcyx", "czyx"])
def test_channel_axis_comes_out_first(tmp_path: Path, axes: str) -> None:
    rng = np.random.default_rng(2)
    sizes = {"c": 2, "z": 3, "y": 40, "x": 50}
    data = rng.integers(0, 255, [sizes[a] for a in axes]).astype(np.uint8)
    chunks = tuple({"c": 2, "z": 1, "y": 16, "x": 16}[a] for a in axes)
    source = open_source(write_zarr(tmp_path / "in.zarr", data, chunks), axes=axes)
    assert source.axes == axes
    plan = plan_for(source, 16)  # a 2D model: z, where present, is iterated
    cyx = np.moveaxis(data, axes.index("c"), 0)  # c then the others in order
    for index in [(0, 0), (1, 2), (2, 3)] if "z" not in axes else [(0, 0, 0), (2, 1, 3)]:
        block = plan.block(index)
        plane = cyx if "z" not in axes else cyx[:, block.write.offset[0]]
        window = read_window(source.open(), source, block)
        assert window.shape == (2, *block.read.spatial(2).shape)
        np.testing.assert_array_equal(window, numpy_window(plane, block))


def test_channel_axis_between_y_and_x(tmp_path: Path) -> None:
    # open_source insists on ...yx last; read_window itself moves c first from anywhere.
    data = np.random.default_rng(3).integers(0, 255, (40, 2, 50)).astype(np.uint8)
    path = write_zarr(tmp_path / "ycx.zarr", data, (16, 2, 16))
    source = ImageSource(url=path, array_path="", axes="ycx", shape=data.shape,
                         dtype=data.dtype.str, chunks=(16, 2, 16), zarr_format=3)
    block = plan_for(source, 16).block((1, 2))
    window = read_window(source.open(), source, block)
    np.testing.assert_array_equal(window, numpy_window(data.transpose(1, 0, 2), block))


def test_iterated_axes_read_one_plane(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 255, (2, 3, 30, 40)).astype(np.uint8)  # tzyx
    source = open_source(write_zarr(tmp_path / "in.zarr", data, (1, 1, 16, 16)), axes="tzyx")
    plan = plan_for(source, 16)
    block = plan.block((1, 2, 0, 1))
    region, _ = input_region(source, block)
    assert region[:2] == (slice(1, 2), slice(2, 3))
    window = read_window(source.open(), source, block)
    np.testing.assert_array_equal(window, numpy_window(data[1, 2][None], block))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("uint8", "uint8"), ("int16", "int16"), ("float32", "float32"), ("uint16", "float32"),
     ("int8", "float32"), ("int32", "float32"), ("uint32", "float32"), ("float64", "float32"),
     ("float16", "float32")],
)
def test_dtype_is_kept_for_uint8_int16_float32_else_float32(tmp_path: Path, dtype: str,
                                                            expected: str) -> None:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    lo, hi = (max(int(info.min), -1000), min(int(info.max), 3000)) if info else (-50, 50)
    image = np.random.default_rng(5).integers(lo, hi, (40, 50)).astype(dtype)
    source = open_source(write_zarr(tmp_path / "in.zarr", image, (16, 16)))
    for index in [(0, 0), (1, 1)]:
        block = plan_for(source, 16).block(index)
        window = read_window(source.open(), source, block)
        assert window.dtype == np.dtype(expected)
        assert window.flags.c_contiguous
        np.testing.assert_array_equal(window, numpy_window(image[None], block).astype(expected))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_and_inf_are_read_as_zero(tmp_path: Path, dtype: str) -> None:
    image = np.random.default_rng(6).normal(100, 10, (40, 50)).astype(dtype)
    image[0, 0], image[1, 3], image[20, 20], image[39, 49] = np.nan, np.inf, -np.inf, np.nan
    source = open_source(write_zarr(tmp_path / "in.zarr", image, (16, 16)))
    clean = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    for block in plan_for(source, 16):
        window = read_window(source.open(), source, block)
        assert np.isfinite(window).all()
        np.testing.assert_array_equal(window, numpy_window(clean[None], block).astype(np.float32))
    # The store itself is untouched.
    assert np.isnan(zarr.open_array(source.url, mode="r")[0, 0])


def test_missing_chunk_raises_naming_its_key(tmp_path: Path) -> None:
    image = np.random.default_rng(7).integers(1, 255, (128, 128)).astype(np.uint8)
    path = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    (tmp_path / "in.zarr" / "c" / "0" / "1").unlink()  # a copy still under way
    source = open_source(path)
    array = source.open()
    plan = plan_for(source, 32)
    # Far from the hole, a block reads as ever.
    far = plan.block((2, 3))
    np.testing.assert_array_equal(read_window(array, source, far), numpy_window(image[None], far))
    with pytest.raises(InputIncompleteError, match=r"chunk\(s\) c/0/1 of .*in\.zarr are missing"):
        read_window(array, source, plan.block((0, 1)))
    with pytest.raises(InputIncompleteError, match="allow_missing_chunks"):
        read_window(array, source, plan.block((0, 0)))  # its halo reaches into c/0/1
    # Allowed: the missing chunk reads as the fill value, 0.
    window = read_window(array, source, plan.block((0, 1)), allow_missing_chunks=True)
    holed = image.copy()
    holed[:32, 32:64] = 0
    np.testing.assert_array_equal(window, numpy_window(holed[None], plan.block((0, 1))))


def test_missing_chunks_of_a_v2_array_in_a_group(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    array = group.create_array("img", shape=(60, 60), chunks=(20, 20), dtype="uint8")
    array[...] = 5
    (tmp_path / "g.zarr" / "img" / "2.1").unlink()
    source = open_source(str(tmp_path / "g.zarr"))
    assert source.array_path == "img"
    region = (slice(0, 60), slice(0, 60))
    assert missing_chunks(source.open(), region) == ["img/2.1"]
    assert missing_chunks(source.open(), (slice(0, 40), slice(0, 60))) == []
    block = plan_for(source, 20).block((2, 1))
    with pytest.raises(InputIncompleteError, match=r"img/2\.1"):
        read_window(source.open(), source, block)


def test_many_missing_chunks_are_listed_four_then_elided(tmp_path: Path) -> None:
    path = write_zarr(tmp_path / "in.zarr", np.ones((64, 64), np.uint8), (8, 8))
    shutil.rmtree(tmp_path / "in.zarr" / "c")
    source = open_source(path)
    with pytest.raises(InputIncompleteError) as caught:
        read_window(source.open(), source, plan_for(source, 32).block((0, 0)))
    message = str(caught.value)
    assert "c/0/0, c/0/1, c/0/2, c/0/3 ..." in message
    assert "c/0/4" not in message


def test_undecodable_chunk_is_input_incomplete_naming_the_region(tmp_path: Path) -> None:
    image = np.random.default_rng(8).integers(0, 255, (64, 64)).astype(np.uint8)
    path = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    (tmp_path / "in.zarr" / "c" / "1" / "1").write_bytes(b"\x00garbage, not zstd\xff" * 7)
    source = open_source(path)
    block = plan_for(source, 32).block((1, 1))
    region, _ = input_region(source, block)
    assert region == (slice(12, 64), slice(12, 64))
    with pytest.raises(InputIncompleteError, match=r"input unreadable: .*in\.zarr region "
                       r"\[\(12, 64\), \(12, 64\)\] could not be decoded"):
        read_window(source.open(), source, block)


def test_chunk_keys_of_a_region(tmp_path: Path) -> None:
    v3 = zarr.open_array(write_zarr(tmp_path / "v3.zarr", np.zeros((50, 50), np.uint8),
                                    (10, 20)), mode="r")
    assert chunk_keys(v3, (slice(5, 25), slice(0, 20))) == ["c/0/0", "c/1/0", "c/2/0"]
    assert chunk_keys(v3, (slice(0, 10), slice(19, 41))) == ["c/0/0", "c/0/1", "c/0/2"]
    assert chunk_keys(v3, (slice(49, 50), slice(49, 50))) == ["c/4/2"]
    v2 = zarr.open_array(write_zarr(tmp_path / "v2.zarr", np.zeros((50, 50), np.uint8),
                                    (10, 20), zarr_format=2), mode="r")
    assert chunk_keys(v2, (slice(10, 30), slice(20, 21))) == ["1.1", "2.1"]
    # A sharded array is stored (and may go missing) shard by shard.
    sharded = zarr.create_array(str(tmp_path / "sharded.zarr"), shape=(40, 40), chunks=(5, 5),
                                shards=(20, 20), dtype="uint8")
    sharded[...] = 1
    assert chunk_keys(sharded, (slice(0, 40), slice(15, 25))) == [
        "c/0/0", "c/0/1", "c/1/0", "c/1/1"]
    assert missing_chunks(sharded, (slice(0, 40), slice(0, 40))) == []
    (tmp_path / "sharded.zarr" / "c" / "1" / "0").unlink()
    assert missing_chunks(sharded, (slice(0, 40), slice(0, 40))) == ["c/1/0"]


# --- through the workers' cache of decoded chunks (chunk_cache.py) ----------------------


class CountingStore(WrapperStore[LocalStore]):
    """A local store that counts the reads of each key: what the cache saves."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self.gets: Counter[str] = Counter()

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self.gets[key] += 1
        return await self._store.get(key, prototype, byte_range)


def _counted(source: ImageSource) -> tuple[Any, CountingStore]:
    store = CountingStore(LocalStore(source.url, read_only=True))
    return zarr.open_array(store, mode="r", path=source.array_path or None), store


# (axes, shape, input chunks, shards, zarr format, model dims): lead axes iterated one
# plane at a time (their chunks span two planes), a channel axis chunked one channel at
# a time, 3D, a sharded array (chunks read inside a shard), zarr v2.
LAYOUTS = {
    "yx": ("yx", (70, 90), (16, 16), None, 3, 2),
    "tzyx": ("tzyx", (2, 3, 30, 40), (1, 2, 16, 16), None, 3, 2),
    "cyx": ("cyx", (2, 40, 50), (1, 16, 16), None, 3, 2),
    "zyx-3d": ("zyx", (20, 30, 50), (8, 16, 16), None, 3, 3),
    "sharded": ("yx", (70, 90), (8, 8), (32, 32), 3, 2),
    "v2": ("yx", (70, 90), (16, 16), None, 2, 2),
}


def _layout_source(tmp_path: Path, name: str) -> tuple[ImageSource, np.ndarray, int]:
    axes, shape, chunks, shards, zarr_format, dims = LAYOUTS[name]
    data = np.random.default_rng(11).integers(0, 255, shape).astype(np.uint8)
    if shards is None:
        path = write_zarr(tmp_path / "in.zarr", data, chunks, zarr_format=zarr_format)
    else:
        array = zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, chunks=chunks,
                                  shards=shards, dtype="uint8")
        array[...] = data
        path = str(tmp_path / "in.zarr")
    return open_source(path, axes=axes), data, dims


def _plane(data: np.ndarray, axes: str, block: Block) -> np.ndarray:
    """The ``(C, *spatial)`` image ``block`` is cut from (its lead axes' plane)."""
    chw = np.moveaxis(data, axes.index("c"), 0) if "c" in axes else data[None]
    return chw[(slice(None), *block.write.offset[:block.lead])]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cached_windows_equal_numpy_and_each_chunk_is_read_once(tmp_path: Path,
                                                                 layout: str) -> None:
    from unet_tiles.model.unet import UNetConfig, build_unet

    source, data, dims = _layout_source(tmp_path, layout)
    model = build_unet(UNetConfig(depth=1, base_channels=1, dims=3)) if dims == 3 else MODEL
    plan = plan_for(source, 16, tile=8, dims=dims, model=model)
    array, store = _counted(source)
    cache = ChunkCache(1 << 30)
    for block in plan:
        window = read_window(array, source, block, cache=cache)
        np.testing.assert_array_equal(window, numpy_window(_plane(data, source.axes, block),
                                                           block))
    chunk_reads = {k: n for k, n in store.gets.items() if not k.endswith(
        ("zarr.json", ".zarray", ".zattrs", ".zgroup"))}
    # Every window reaches into its neighbours' chunks, which the cache had decoded.
    assert cache.hits > cache.misses
    if layout != "sharded":
        # Unsharded, each chunk is one read, and each was read (then decoded) once per
        # plane of the iterated axes it holds (a z chunk of two planes: twice).
        lead = len(source.axes) - dims - ("c" in source.axes)
        chunks = LAYOUTS[layout][2]
        for key, reads in chunk_reads.items():
            index = [int(i) for i in key.replace(".", "/").split("/")[-len(chunks):]]
            planes = [min(chunks[a], source.shape[a] - index[a] * chunks[a])
                      for a in range(lead)]
            assert reads == int(np.prod(planes)), key
    # Each piece (a chunk's box along the tiled axes, the window's along the others)
    # was fetched once; a shard is read once per window that still needed chunks of it.
    assert cache.misses == len(cache)


def test_uncached_reads_of_the_same_blocks_read_chunks_again(tmp_path: Path) -> None:
    # The baseline of the test above: without a cache a chunk is read by every window
    # that touches it.
    source, _data, _dims = _layout_source(tmp_path, "yx")
    array, store = _counted(source)
    for block in plan_for(source, 16, tile=8):
        read_window(array, source, block)
    assert max(store.gets.values()) > 1


def test_a_cache_smaller_than_a_chunk_still_reads_every_window_right(tmp_path: Path) -> None:
    data = np.random.default_rng(12).integers(0, 255, (64, 96)).astype(np.uint8)
    source = open_source(write_zarr(tmp_path / "in.zarr", data, (16, 16)))
    cache = ChunkCache(16 * 16 - 1)
    for block in plan_for(source, 16, tile=8):
        window = read_window(source.open(), source, block, cache=cache)
        np.testing.assert_array_equal(window, numpy_window(data[None], block))
    assert len(cache) == 0


def test_a_missing_chunk_is_named_through_the_cache_and_allowed_as_fill(
        tmp_path: Path) -> None:
    image = np.random.default_rng(7).integers(1, 255, (128, 128)).astype(np.uint8)
    path = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    (tmp_path / "in.zarr" / "c" / "0" / "1").unlink()
    source = open_source(path)
    plan = plan_for(source, 32)
    cache = ChunkCache(1 << 30)
    # Its neighbour, far from the hole, fills the cache with chunks the next one needs.
    read_window(source.open(), source, plan.block((2, 3)), cache=cache)
    assert len(cache) > 0
    with pytest.raises(InputIncompleteError, match=r"chunk\(s\) c/0/1 of .*in\.zarr are missing"):
        read_window(source.open(), source, plan.block((0, 1)), cache=cache)
    window = read_window(source.open(), source, plan.block((0, 1)),
                         allow_missing_chunks=True, cache=cache)
    holed = image.copy()
    holed[:32, 32:64] = 0
    np.testing.assert_array_equal(window, numpy_window(holed[None], plan.block((0, 1))))


def test_an_undecodable_chunk_through_the_cache_names_the_region(tmp_path: Path) -> None:
    image = np.random.default_rng(8).integers(0, 255, (128, 128)).astype(np.uint8)
    path = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    (tmp_path / "in.zarr" / "c" / "3" / "3").write_bytes(b"\x00garbage, not zstd\xff" * 7)
    source = open_source(path)
    plan = plan_for(source, 32)
    cache = ChunkCache(1 << 30)
    for index in [(0, 0), (1, 1)]:  # neither reaches c/3/3
        read_window(source.open(), source, plan.block(index), cache=cache)
    with pytest.raises(InputIncompleteError, match=r"input unreadable: .*in\.zarr region "
                       r"\[\(76, 128\), \(76, 128\)\] could not be decoded"):
        read_window(source.open(), source, plan.block((3, 3)), cache=cache)
    assert len(cache) > 0
    assert ((96, 128), (96, 128)) not in cache


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 30), st.integers(1, 30)),
    chunks=st.tuples(st.integers(1, 3), st.integers(3, 13), st.integers(3, 13)),
    shard_factor=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3),
                                                st.integers(1, 3))),
    budget_chunks=st.integers(0, 12),
    data=st.data(),
)
def test_read_region_equals_zarr_whatever_the_regions_and_budget(
        shape: tuple[int, int, int], chunks: tuple[int, int, int],
        shard_factor: tuple[int, int, int] | None, budget_chunks: int,
        data: st.DataObject) -> None:
    # A zarr array in memory, sharded or not, read region after region (a lead axis
    # of planes, two split axes) through one cache of a few chunks' budget.
    shards = None if shard_factor is None else tuple(
        c * f for c, f in zip(chunks, shard_factor, strict=True))
    array = zarr.create_array({}, shape=shape, chunks=chunks, shards=shards, dtype="int16",
                              config={"write_empty_chunks": True})
    values = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    array[...] = values
    cache = ChunkCache(budget_chunks * int(np.prod(chunks)) * 2)
    for _ in range(4):
        plane = data.draw(st.integers(0, shape[0] - 1))
        region = [slice(plane, plane + 1)]
        for n in shape[1:]:
            start = data.draw(st.integers(0, n - 1))
            region.append(slice(start, data.draw(st.integers(start + 1, n))))
        got = read_region(array, tuple(region), [1, 2], cache=cache)
        np.testing.assert_array_equal(got, values[tuple(region)])
        assert cache.nbytes <= cache.max_bytes

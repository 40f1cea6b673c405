"""A block's read window against numpy: mirrored at the border, channels first, dtypes kept
or widened, NaN/Inf read as 0, missing chunks named (invariant 6)."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zarr
from helpers import write_zarr
from strategies import MODELS

from unet_tiles.errors import InputIncompleteError
from unet_tiles.pipeline.plan import make_plan
from unet_tiles.pipeline.source import ImageSource, open_source
from unet_tiles.pipeline.window import chunk_keys, input_region, missing_chunks, read_window

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

"""predict_block on real tiny models: the tiled block equals one forward pass over its whole
window, however the tiles are batched, with the documented dtypes and tie rule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from helpers import reference_logits, softmax, write_zarr

from unet_tiles import load_model
from unet_tiles.pipeline.plan import make_plan
from unet_tiles.pipeline.predict import (
    cached_model,
    channels_last_on,
    class_argmax,
    memory_format,
    predict_block,
)
from unet_tiles.pipeline.source import open_source
from unet_tiles.pipeline.window import read_window

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from unet_tiles.model.unet import UNet
    from unet_tiles.pipeline.plan import Block


def _window(tmp_path: Path, image: np.ndarray, model: UNet, block_size: int, tile: int,
            index: tuple[int, ...], axes: str | None = None) -> tuple[np.ndarray, Block]:
    source = open_source(write_zarr(tmp_path / "in.zarr", image, image.shape), axes=axes)
    dims = model.config.dims
    out_axes = source.axes.replace("c", "")
    shape = tuple(source.axis_size(a) for a in out_axes)
    chunks = (1,) * (len(shape) - dims) + (block_size,) * dims
    plan = make_plan(shape, dims, chunks, chunks, model, tile)
    block = plan.block(index)
    return read_window(source.open(), source, block), block


def _whole_window_logits(model: UNet, window: np.ndarray, block: Block) -> np.ndarray:
    """One forward pass over the whole read window, cropped to the block's write region."""
    with torch.inference_mode():
        out = model(torch.from_numpy(window.astype(np.float32))[None])[0].numpy()
    crop = block.write.spatial(block.dims).relative_to(block.tile_origin).to_slices()
    return out[(slice(None), *crop)]


def _predict(model: UNet, window: np.ndarray, block: Block, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"want_labels": True, "want_probabilities": True,
                               "probability_dtype": "float32", **kwargs}
    return predict_block(model, window, block, **options)


@pytest.mark.parametrize("index", [(0, 0), (1, 2), (2, 3)])
def test_block_equals_one_pass_over_its_mirrored_window(
        tmp_path: Path, make_model: Callable[..., Path], index: tuple[int, int]) -> None:
    model_dir = make_model(depth=2, base_channels=4)
    model = load_model(str(model_dir))
    image = np.random.default_rng(0).integers(0, 255, (150, 211)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 64, 16, index)
    assert all(t.count > 1 for t in block.tiles)  # several tiles per axis
    result = _predict(model, window, block)
    expected = _whole_window_logits(model, window, block)
    write = block.write.to_slices()
    assert result.probabilities.shape == (3, *block.write.shape)
    assert result.labels.shape == block.write.shape
    assert result.labels.dtype == np.uint8
    assert result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, softmax(expected), atol=1e-4)
    # And the window is the whole image's mirror padding: the block is the image's run.
    whole = reference_logits(model_dir, image[None])[(slice(None), *write)]
    np.testing.assert_allclose(result.probabilities, softmax(whole), atol=1e-4)
    # Labels: the first maximum of the logits. Pixels whose ReLUs all died tie exactly
    # (every logit is the head's zero bias) and are class 0; only near-ties may differ.
    top2 = np.sort(expected, axis=0)[-2:]
    margin = top2[1] - top2[0]
    tied = (expected == expected[:1]).all(axis=0)
    assert tied.any()
    assert (result.labels[tied] == 0).all()
    near = (margin > 0) & (margin < 1e-2)
    assert near.mean() < 0.01
    np.testing.assert_array_equal(result.labels[~near], expected.argmax(0)[~near])


def test_3d_block_equals_one_pass(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(dims=3, depth=1, base_channels=2)))
    image = np.random.default_rng(1).random((20, 26, 30)).astype(np.float32) * 100
    window, block = _window(tmp_path, image, model, 16, 8, (1, 0, 1))
    assert block.write.shape == (4, 16, 14)
    result = _predict(model, window, block)
    np.testing.assert_allclose(result.probabilities,
                               softmax(_whole_window_logits(model, window, block)), atol=1e-4)
    assert result.labels.shape == (4, 16, 14)


def test_a_plane_of_a_stack_gives_spatial_outputs(tmp_path: Path,
                                                  make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(depth=1, in_channels=2)))
    image = np.random.default_rng(2).integers(0, 255, (3, 2, 40, 50)).astype(np.uint8)  # zcyx
    window, block = _window(tmp_path, image, model, 32, 16, (2, 1, 0), axes="zcyx")
    assert window.shape[0] == 2
    result = _predict(model, window, block)
    assert result.labels.shape == (8, 32)  # y 32:40, x 0:32 of plane z=2
    ref = reference_logits(make_model(depth=1, in_channels=2), image[2])
    np.testing.assert_allclose(result.probabilities, softmax(ref)[:, 32:40, 0:32], atol=1e-4)


def test_batch_size_changes_nothing_beyond_float_rounding(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    # Not bit-identical: torch's CPU convolutions round differently for a batch of
    # one and of three (measured here: logits ~300 differ by up to 4e-4, probabilities
    # by up to 5e-5); each batch size is deterministic.
    model = load_model(str(make_model(depth=2, base_channels=4)))
    image = np.random.default_rng(3).integers(0, 255, (90, 120)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 128, 24, (0, 0))
    tiles = block.tiles[0].count * block.tiles[1].count
    assert tiles > 3
    assert tiles % 3  # the last batch of three is a short one
    one = _predict(model, window, block, batch_size=1)
    three = _predict(model, window, block, batch_size=3)
    every = _predict(model, window, block, batch_size=tiles)
    again = _predict(model, window, block, batch_size=3)
    np.testing.assert_array_equal(again.probabilities, three.probabilities)
    np.testing.assert_array_equal(again.labels, three.labels)
    top2 = np.sort(one.probabilities, axis=0)[-2:]
    margin = top2[1] - top2[0]
    clear = (margin == 0) | (margin > 1e-3)  # exact ties (dead ReLUs) tie in every batch
    assert clear.mean() > 0.99
    for other in (three, every):
        np.testing.assert_array_equal(other.labels[clear], one.labels[clear])
        np.testing.assert_allclose(other.probabilities, one.probabilities, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_the_contiguous_result(
        tmp_path: Path, make_model: Callable[..., Path], dims: int) -> None:
    model_dir = make_model(dims=dims, depth=2, base_channels=4, in_channels=2)
    contiguous = load_model(str(model_dir))
    last = cached_model(str(model_dir), "channels-last test", "cpu", True)
    fmt = memory_format(dims)
    convs = [p for p in last.parameters() if p.dim() == dims + 2]
    assert convs
    assert all(p.is_contiguous(memory_format=fmt) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # the layout really changed
    shape = (2, 70, 90) if dims == 2 else (2, 40, 44, 48)
    image = np.random.default_rng(7).integers(0, 255, shape).astype(np.uint8)
    block_size, tile = (64, 24) if dims == 2 else (32, 16)
    window, block = _window(tmp_path, image, contiguous, block_size, tile, (0,) * dims,
                            axes="cyx" if dims == 2 else "czyx")
    assert np.prod([t.count for t in block.tiles]) > 1
    reference = _predict(contiguous, window, block)
    result = _predict(last, window, block, channels_last=True)
    # Float rounding only (the batch-size test measures the same order).
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=1e-4, rtol=0)
    top2 = np.sort(reference.probabilities, axis=0)[-2:]
    clear = (top2[1] == top2[0]) | (top2[1] - top2[0] > 1e-4)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(result.labels[clear], reference.labels[clear])


def test_channels_last_where_it_measured_faster() -> None:
    assert channels_last_on("cpu")
    assert not channels_last_on("cuda")
    assert not channels_last_on("cuda:1")
    assert not channels_last_on("cpu", False)
    assert channels_last_on("cuda", True)


def test_probability_dtype_and_outputs_asked_for(tmp_path: Path,
                                                 make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(depth=2, base_channels=4)))
    image = np.random.default_rng(4).integers(0, 255, (60, 70)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 64, 32, (0, 1))
    full = _predict(model, window, block)
    half = _predict(model, window, block, probability_dtype="float16")
    assert half.probabilities.dtype == np.float16
    assert half.probabilities.flags.c_contiguous
    np.testing.assert_allclose(half.probabilities.astype(np.float32), full.probabilities,
                               atol=1e-3)
    np.testing.assert_array_equal(half.labels, full.labels)
    np.testing.assert_allclose(full.probabilities.sum(axis=0), 1.0, atol=1e-5)
    labels_only = _predict(model, window, block, want_probabilities=False)
    assert labels_only.probabilities is None
    np.testing.assert_array_equal(labels_only.labels, full.labels)
    probs_only = _predict(model, window, block, want_labels=False)
    assert probs_only.labels is None
    np.testing.assert_array_equal(probs_only.probabilities, full.probabilities)


def test_window_dtype_does_not_change_the_result(tmp_path: Path,
                                                 make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(depth=2, base_channels=4)))
    image = np.random.default_rng(5).integers(0, 255, (60, 70)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 64, 32, (0, 0))
    assert window.dtype == np.uint8
    as_uint8 = _predict(model, window, block)
    as_float = _predict(model, window.astype(np.float32), block)
    np.testing.assert_array_equal(as_uint8.probabilities, as_float.probabilities)


def test_labels_follow_probabilities_with_the_first_maximum_winning(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(depth=2, base_channels=4, classes=4)))
    image = np.random.default_rng(6).integers(0, 255, (50, 60)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 64, 32, (0, 0))
    result = _predict(model, window, block)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=0))
    assert len(np.unique(result.labels)) > 1
    # A head whose logits tie everywhere between classes 1 and 3: class 1 wins.
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 2.0, -1.0, 2.0]))
    tied = _predict(model, window, block)
    assert (tied.labels == 1).all()
    np.testing.assert_allclose(tied.probabilities[:, 0, 0],
                               softmax(np.array([0.0, 2.0, -1.0, 2.0])), rtol=1e-6)


def test_class_argmax_ties_on_block_logits() -> None:
    logits = torch.tensor([[3.0, 3.0, 1.0], [1.0, 5.0, 5.0], [2.0, 2.0, 2.0]]).T
    logits = logits.reshape(1, 3, 3, 1).expand(2, 3, 3, 4)  # a broadcast, strided view
    labels = class_argmax(logits)
    assert labels.dtype == torch.uint8
    assert labels.shape == (2, 3, 4)
    assert labels[0, :, 0].tolist() == [0, 1, 0]
    many = torch.zeros(1, 300, 2, 2)
    many[0, 299, 1, 1] = 1.0
    many[0, 257, 0, 1] = 1.0
    many[0, 258, 0, 1] = 1.0
    out = class_argmax(many)
    assert out.dtype == torch.int32
    assert out[0].tolist() == [[0, 257], [0, 299]]


def test_many_classes_give_uint16_labels(tmp_path: Path,
                                         make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(depth=1, base_channels=2, classes=300)))
    image = np.random.default_rng(7).integers(0, 255, (30, 40)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 32, 16, (0, 1))
    result = _predict(model, window, block)
    assert result.labels.dtype == np.uint16
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=0))
    assert result.labels.max() > 255 or len(np.unique(result.labels)) > 1


def test_cached_model_loads_once_per_hash(make_model: Callable[..., Path]) -> None:
    model_dir = str(make_model(depth=1))
    first = cached_model(model_dir, "hash-a", "cpu")
    assert cached_model(model_dir, "hash-a", "cpu") is first
    assert cached_model(model_dir, "hash-b", "cpu") is not first
    assert not first.training


class _SmallDevice(torch.nn.Module):
    """The real model on a device that holds at most ``most`` tiles at once: a larger
    batch raises the out-of-memory error a GPU raises (no GPU here to run out)."""

    def __init__(self, model: UNet, most: int) -> None:
        super().__init__()
        self.model, self.most, self.batches = model, most, []
        self.config, self.halo = model.config, model.halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        if x.shape[0] > self.most:
            raise torch.OutOfMemoryError("CUDA out of memory (a device of two tiles)")
        return self.model(x)  # type: ignore[no-any-return]


def test_out_of_memory_halves_the_batch_and_changes_no_result(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    model = load_model(str(make_model(depth=2, base_channels=4)))
    image = np.random.default_rng(3).integers(0, 255, (90, 120)).astype(np.uint8)
    window, block = _window(tmp_path, image, model, 128, 24, (0, 0))
    small = _SmallDevice(model, most=2)
    halved = _predict(small, window, block, batch_size=8)  # type: ignore[arg-type]
    assert small.batches[:3] == [8, 4, 2]  # 8, then 4 fail; 2 from then on
    assert set(small.batches[2:]) <= {1, 2}
    two = _predict(model, window, block, batch_size=2)
    np.testing.assert_array_equal(halved.labels, two.labels)
    np.testing.assert_array_equal(halved.probabilities, two.probabilities)
    with pytest.raises(torch.OutOfMemoryError):
        _predict(_SmallDevice(model, most=0), window, block, batch_size=4)  # type: ignore[arg-type]

"""Block plans: pure geometry, no I/O, no torch.

Coordinates are those of the output ``labels`` array: the input's axes without
``c``. The last ``dims`` axes are *spatial* (the model convolves over them);
the others (``t``, and ``z`` for a 2D model) are iterated one plane at a time.

One block along a spatial axis, with its tiles (``halo`` = h, tile output
stride ``s``, tile input ``m``; ``t0`` is the block start rounded down to the
pooling grid ``2**depth``)::

    image:   |0 .............................................. n|
    block:               [a ======== write ======== b)
    tiles:            t0 [--- s ---][--- s ---][--- s ---)
    read:        t0-h [------------------- window --------------------) end
                      each tile reads m = valid_size(s + 2h) >= s + 2h

Every tile's output starts at a multiple of ``2**depth`` in image coordinates,
which is its input start in the mirror-padded image (origin at ``-h``): all
tiles share the whole image's pooling grid, so the tiled result equals one run
on the whole padded image (DESIGN.md invariant 1).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from unet_tiles.errors import UsageError
from unet_tiles.pipeline.geometry import Box

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence


class ModelGeometry(Protocol):
    @property
    def halo(self) -> tuple[int, ...]: ...

    @property
    def divisor(self) -> int: ...

    def valid_size(self, n: int) -> int: ...


@dataclass(frozen=True)
class TileAxis:
    """Tiles along one spatial axis of a block: ``count`` tiles of input ``size_in``.

    Tile ``i`` writes output ``[start + i * stride, start + (i + 1) * stride)``
    and reads input ``[start + i * stride - halo, ... + size_in)``.
    """

    start: int
    stride: int
    count: int
    size_in: int


@dataclass(frozen=True)
class Block:
    """One task's work: the output region it writes and the input window it reads."""

    index: tuple[int, ...]
    write: Box
    read: Box
    tiles: tuple[TileAxis, ...]

    @property
    def id(self) -> str:
        return ".".join(str(i) for i in self.index)

    @property
    def dims(self) -> int:
        """Spatial axes (the model's): one tile axis each."""
        return len(self.tiles)

    @property
    def lead(self) -> int:
        """Leading (iterated) axes before the spatial ones; each of extent 1 here."""
        return self.write.ndim - self.dims

    @property
    def tile_origin(self) -> tuple[int, ...]:
        """Where the first tile's output starts, per spatial axis (on the pooling grid)."""
        return tuple(t.start for t in self.tiles)

    def describe(self, axes: str) -> str:
        """``block 0.1 (y=0:64, x=64:128)``: how messages name a block."""
        return f"block {self.id} ({self.write.describe(axes)})"


@dataclass(frozen=True)
class BlockPlan:
    """Blocks covering an output of ``shape`` in ``block_shape`` units of whole chunks."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    block_shape: tuple[int, ...]
    dims: int
    halo: tuple[int, ...]
    divisor: int
    tile_out: int
    min_size_in: int
    # zarr v3 shards (each one store object of whole chunks), or None.
    shards: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        units = {"chunks": self.chunks, **({"shards": self.shards} if self.shards else {})}
        for what, unit in units.items():
            for axis, (c, b) in enumerate(zip(unit, self.block_shape, strict=True)):
                if c <= 0 or b % c:
                    # Blocks are unions of whole chunks (and shards): no two tasks may
                    # write one; concurrent partial-shard writes lose data in zarr.
                    raise ValueError(
                        f"block shape {self.block_shape} is not a multiple of {what} {unit} "
                        f"on axis {axis}"
                    )
        if self.shards and any(s % c for s, c in zip(self.shards, self.chunks, strict=True)):
            raise ValueError(f"shards {self.shards} are not whole chunks {self.chunks}")

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape, strict=True))

    def __len__(self) -> int:
        return math.prod(self.grid)

    @property
    def lead(self) -> int:
        """Leading (iterated) axes before the ``dims`` spatial ones."""
        return len(self.shape) - self.dims

    def block(self, index: Sequence[int]) -> Block:
        start = tuple(i * b for i, b in zip(index, self.block_shape, strict=True))
        write = Box(start, self.block_shape).intersect(Box.of_shape(self.shape))
        spatial = write.spatial(self.dims)
        tiles = tuple(
            tile_axis(a, e, h, self.divisor, self.tile_out, self.valid_size)
            for a, e, h in zip(spatial.offset, spatial.end, self.halo, strict=True)
        )
        # Tiles write [start, start + count * stride) and each reads its output
        # grown by the halo (up to its valid input size): so does the window.
        covered = Box(tuple(t.start for t in tiles), tuple(t.count * t.stride for t in tiles))
        read = write.leading(self.dims).concat(covered.grow(
            self.halo, [t.size_in - t.stride - h for t, h in zip(tiles, self.halo, strict=True)]
        ))
        return Block(tuple(index), write, read, tiles)

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid)):
            yield self.block(index)

    def valid_size(self, n: int) -> int:
        """The model's smallest valid input ``>= n``.

        Valid U-Net inputs are ``min_size_in + k * divisor`` (each pooling
        needs an even size); ``tests/test_plan.py`` checks this against
        ``UNet.valid_size`` for many architectures.
        """
        steps = max(0, -(-(n - self.min_size_in) // self.divisor))
        return self.min_size_in + steps * self.divisor


def tile_axis(a: int, b: int, halo: int, divisor: int, tile_out: int,
              valid_size: Callable[[int], int]) -> TileAxis:
    """Cover ``[a, b)`` with equal tiles on the pooling grid (see module diagram)."""
    start = (a // divisor) * divisor
    extent = b - start
    count = max(1, -(-extent // tile_out))
    stride = -(-extent // count)
    stride = -(-stride // divisor) * divisor
    size_in = valid_size(stride + 2 * halo)
    return TileAxis(start, stride, count, size_in)


def make_plan(shape: Sequence[int], dims: int, chunks: Sequence[int],
              block_shape: Sequence[int], model: ModelGeometry, tile_out: int,
              shards: Sequence[int] | None = None) -> BlockPlan:
    """A plan for ``model``'s geometry (anything with ``halo``, ``divisor``, ``valid_size``)."""
    return BlockPlan(tuple(shape), tuple(chunks), tuple(block_shape), dims, tuple(model.halo),
                     model.divisor, tile_out, model.valid_size(1),
                     tuple(shards) if shards else None)


def shard_shape(shape: Sequence[int], chunks: Sequence[int], dims: int,
                shard_px: int) -> tuple[int, ...]:
    """Shards of about ``shard_px`` per spatial axis in whole chunks (leading axes:
    one chunk), never more chunks than cover the image."""
    lead = len(shape) - dims
    shards = list(chunks[:lead])
    for axis in range(lead, len(shape)):
        c = chunks[axis]
        count = max(1, round(shard_px / c))
        shards.append(min(count, -(-int(shape[axis]) // c)) * c)
    return tuple(shards)


def output_chunks(shape: Sequence[int], input_chunks: Sequence[int], dims: int,
                  block: int | None) -> tuple[int, ...]:
    """Output chunks: the input's spatial chunking, brought to a sensible size.

    Iterated axes get chunk 1 (one plane per task). Spatial chunks are kept
    between 256 and 1024 px (2D) or 64 and 256 (3D), clipped to the image, and
    divide the block size so blocks are unions of whole chunks.
    """
    lead = len(shape) - dims
    lo, hi = (256, 1024) if dims == 2 else (64, 256)
    chunks = [1] * lead
    for axis in range(lead, len(shape)):
        c = int(input_chunks[axis])
        while c < lo:
            c *= 2
        while c > hi:
            c = -(-c // 2)
        if block is not None:
            parts = -(-block // c)
            while block % parts:
                parts += 1
            c = block // parts
        chunks.append(max(1, min(c, int(shape[axis]))))
    return tuple(chunks)


def block_shape(shape: Sequence[int], chunks: Sequence[int], dims: int,
                block: int | None, default_block: int) -> tuple[int, ...]:
    """Block extents: ``block`` (or the default) per spatial axis, in whole chunks."""
    lead = len(shape) - dims
    out = list(chunks[:lead])
    for axis in range(lead, len(shape)):
        want = block if block is not None else default_block
        c = chunks[axis]
        whole = max(1, round(want / c)) * c
        out.append(min(whole, -(-int(shape[axis]) // c) * c))
    return tuple(out)


def check_block_size(block: int, minimum: int) -> None:
    if block < minimum:
        raise UsageError(
            f"`block_size` {block} is below this model's minimum of {minimum} px "
            f"(its pooling grid); use `block_size` {max(minimum, 256)} or more"
        )


def reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices into ``[0, n)`` for ``[start, stop)`` mirrored as numpy's ``reflect``.

    The edge pixel is not repeated, and the mirror continues as far as asked
    (a triangle wave of period ``2 * (n - 1)``), exactly as ``np.pad`` with
    ``mode="reflect"`` does for pads wider than the image.
    """
    index = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index < n, index, period - index)

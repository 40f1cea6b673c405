"""Axis-aligned boxes: pure geometry, no I/O, no numpy.

A ``Box`` is an ``offset`` and a ``shape`` per axis, in pixels; it may leave
the image (a block's read window does, by the halo). Output coordinates put
the *leading* axes first (``t``, and ``z`` for a 2D model: iterated one plane
at a time) and the *spatial* axes last (the ones the model convolves over)::

    axes      t   z | y   x          dims = 2: lead = 2 leading, 2 spatial
              leading  spatial
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True)
class Box:
    """``offset`` and ``shape`` per axis; the box is ``[offset, offset + shape)``."""

    offset: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.offset) != len(self.shape):
            raise ValueError(f"Box offset {self.offset} and shape {self.shape} differ in length")
        if any(s < 0 for s in self.shape):
            raise ValueError(f"Box shape {self.shape} has a negative extent")

    @classmethod
    def of_shape(cls, shape: Sequence[int]) -> Box:
        """The box ``[0, shape)``: a whole array."""
        return cls((0,) * len(shape), tuple(int(s) for s in shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def end(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offset, self.shape, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def leading(self, dims: int) -> Box:
        """The axes before the last ``dims`` (iterated plane by plane)."""
        return Box(self.offset[: self.ndim - dims], self.shape[: self.ndim - dims])

    def spatial(self, dims: int) -> Box:
        """The last ``dims`` axes (the ones the model convolves over)."""
        return Box(self.offset[self.ndim - dims :], self.shape[self.ndim - dims :])

    def concat(self, other: Box) -> Box:
        """This box's axes followed by ``other``'s."""
        return Box(self.offset + other.offset, self.shape + other.shape)

    def grow(self, before: Sequence[int], after: Sequence[int]) -> Box:
        """Extended by ``before`` below and ``after`` above the box, per axis."""
        return Box(
            tuple(o - b for o, b in zip(self.offset, before, strict=True)),
            tuple(s + b + a for s, b, a in zip(self.shape, before, after, strict=True)),
        )

    def intersect(self, other: Box) -> Box:
        """The common part (empty extents where the boxes do not meet)."""
        lo = tuple(max(a, b) for a, b in zip(self.offset, other.offset, strict=True))
        hi = tuple(min(a, b) for a, b in zip(self.end, other.end, strict=True))
        return Box(lo, tuple(max(b - a, 0) for a, b in zip(lo, hi, strict=True)))

    def relative_to(self, origin: Sequence[int]) -> Box:
        """The same box in coordinates whose zero is ``origin``."""
        return Box(tuple(o - r for o, r in zip(self.offset, origin, strict=True)), self.shape)

    def to_slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape, strict=True))

    def describe(self, axes: str) -> str:
        """``y=0:64, x=64:128`` for ``axes`` ``"yx"``."""
        return ", ".join(f"{a}={o}:{e}" for a, o, e in zip(axes, self.offset, self.end,
                                                            strict=True))

    def ranges(self, axes: str) -> dict[str, list[int]]:
        """``{"y": [0, 64], "x": [64, 128]}``: the box as JSON-friendly ranges."""
        return {a: [o, e] for a, o, e in zip(axes, self.offset, self.end, strict=True)}


__all__ = ["Box"]

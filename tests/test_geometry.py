"""Boxes: each operation by hand, then its laws over drawn boxes against numpy masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import boxes

from unet_tiles.pipeline.geometry import Box

EXTENT = {1: 50, 2: 50, 3: 12}  # boxes(n, extent): offsets in [-e, e], extents in [0, e]


def _drawn(n: int) -> st.SearchStrategy[Box]:
    return boxes(n, EXTENT[n])


def _canvas(ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Origin and shape of a canvas holding every drawn box, grown by up to ``e`` a side."""
    e = EXTENT[ndim]
    return (-2 * e,) * ndim, (5 * e,) * ndim


def _mask(box: Box) -> np.ndarray:
    """``box`` painted on the canvas (numpy slicing does the clipping arithmetic)."""
    origin, shape = _canvas(box.ndim)
    mask = np.zeros(shape, dtype=bool)
    mask[box.relative_to(origin).to_slices()] = True
    return mask


# --- by hand ----------------------------------------------------------------------------


def test_of_shape_end_size_ndim() -> None:
    box = Box.of_shape((3, 40, 50))
    assert box == Box((0, 0, 0), (3, 40, 50))
    assert box.end == (3, 40, 50)
    assert box.size == 6000
    assert box.ndim == 3
    assert Box((-5, 7), (10, 0)).end == (5, 7)
    assert Box((-5, 7), (10, 0)).size == 0


def test_grow() -> None:
    box = Box((10, 20), (30, 40))
    assert box.grow((2, 3), (4, 5)) == Box((8, 17), (36, 48))
    # A read window may leave the image: the offset goes negative.
    assert Box((0, 0), (4, 4)).grow((20, 20), (1, 0)) == Box((-20, -20), (25, 24))
    with pytest.raises(ValueError, match="shorter"):  # one growth per axis, strictly
        box.grow((1,), (1,))


def test_intersect() -> None:
    a = Box((0, 10), (20, 20))
    b = Box((5, -5), (30, 20))
    assert a.intersect(b) == Box((5, 10), (15, 5))
    assert b.intersect(a) == Box((5, 10), (15, 5))
    # Disjoint along one axis: that extent is 0, never negative.
    c = Box((100, 10), (5, 5))
    assert a.intersect(c) == Box((100, 10), (0, 5))
    assert a.intersect(c).size == 0
    # Touching boxes share nothing.
    assert Box((0,), (10,)).intersect(Box((10,), (5,))).shape == (0,)


def test_relative_to() -> None:
    assert Box((10, 20), (3, 4)).relative_to((8, 25)) == Box((2, -5), (3, 4))
    assert Box((-4,), (9,)).relative_to((-4,)) == Box((0,), (9,))


def test_leading_spatial_concat() -> None:
    box = Box((2, 5, 64, 128), (1, 1, 64, 32))  # t z y x, a 2D model
    assert box.leading(2) == Box((2, 5), (1, 1))
    assert box.spatial(2) == Box((64, 128), (64, 32))
    assert box.leading(3) == Box((2,), (1,))
    assert box.spatial(3) == Box((5, 64, 128), (1, 64, 32))
    assert box.leading(4) == Box((), ())
    assert box.spatial(0) == Box((), ())
    assert box.leading(2).concat(box.spatial(2)) == box
    assert Box((1,), (2,)).concat(Box((3, 4), (5, 6))) == Box((1, 3, 4), (2, 5, 6))


def test_to_slices() -> None:
    assert Box((2, 0), (3, 5)).to_slices() == (slice(2, 5), slice(0, 5))
    image = np.arange(100).reshape(10, 10)
    assert (image[Box((2, 3), (2, 2)).to_slices()] == [[23, 24], [33, 34]]).all()


def test_describe_and_ranges() -> None:
    box = Box((0, 64), (64, 64))
    assert box.describe("yx") == "y=0:64, x=64:128"
    assert box.ranges("yx") == {"y": [0, 64], "x": [64, 128]}
    window = Box((2, -20, -20), (1, 100, 90))
    assert window.describe("zyx") == "z=2:3, y=-20:80, x=-20:70"
    assert window.ranges("zyx") == {"z": [2, 3], "y": [-20, 80], "x": [-20, 70]}


@pytest.mark.parametrize(
    ("offset", "shape", "message"),
    [((0, 0), (1,), "differ in length"), ((0,), (1, 1), "differ in length"),
     ((0, 0), (3, -1), "negative extent"), ((5,), (-2,), "negative extent")],
)
def test_invalid_box_raises(offset: tuple[int, ...], shape: tuple[int, ...],
                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Box(offset, shape)


def test_intersect_of_different_ndim_raises() -> None:
    with pytest.raises(ValueError, match="zip"):
        Box((0, 0), (1, 1)).intersect(Box((0,), (1,)))


def test_box_is_hashable_and_frozen() -> None:
    box = Box((1, 2), (3, 4))
    assert {box: 1}[Box((1, 2), (3, 4))] == 1
    with pytest.raises(AttributeError):
        box.offset = (0, 0)  # type: ignore[misc]


# --- laws over drawn boxes ----------------------------------------------------------------


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(_drawn(n), _drawn(n))))
@settings(max_examples=300, deadline=None)
def test_intersect_is_commutative_contained_and_equals_mask_overlap(
        pair: tuple[Box, Box]) -> None:
    a, b = pair
    common = a.intersect(b)
    assert common == b.intersect(a)
    assert all(s >= 0 for s in common.shape)
    overlap = _mask(a) & _mask(b)
    assert common.size == int(overlap.sum())
    if common.size:
        # Contained in both, and exactly the pixels both cover.
        assert all(lo >= o for lo, o in zip(common.offset, a.offset, strict=True))
        assert all(lo >= o for lo, o in zip(common.offset, b.offset, strict=True))
        assert all(hi <= e for hi, e in zip(common.end, a.end, strict=True))
        assert all(hi <= e for hi, e in zip(common.end, b.end, strict=True))
        assert (overlap == _mask(common)).all()
        assert common.intersect(a) == common == common.intersect(b)


@given(boxes(2), boxes(2))
@settings(max_examples=200, deadline=None)
def test_intersect_with_itself_and_a_container(a: Box, b: Box) -> None:
    assert a.intersect(a) == a
    hull_lo = tuple(min(x, y) for x, y in zip(a.offset, b.offset, strict=True))
    hull_hi = tuple(max(x, y) for x, y in zip(a.end, b.end, strict=True))
    hull = Box(hull_lo, tuple(h - lo for lo, h in zip(hull_lo, hull_hi, strict=True)))
    assert a.intersect(hull) == a
    assert b.intersect(hull) == b


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(
    _drawn(n), st.tuples(*[st.integers(0, EXTENT[n])] * n),
    st.tuples(*[st.integers(0, EXTENT[n])] * n))))
@settings(max_examples=200, deadline=None)
def test_grow_then_to_slices_holds_the_box_at_relative_to(
        drawn: tuple[Box, tuple[int, ...], tuple[int, ...]]) -> None:
    box, before, after = drawn
    grown = box.grow(before, after)
    assert grown.shape == tuple(s + b + a for s, b, a in
                                zip(box.shape, before, after, strict=True))
    assert grown.intersect(box) == box
    origin, shape = _canvas(box.ndim)
    canvas = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    window = canvas[grown.relative_to(origin).to_slices()]
    assert window.shape == grown.shape
    # The box, in the grown window's own coordinates, is the box read from the canvas.
    inner = window[box.relative_to(grown.offset).to_slices()]
    assert (inner == canvas[box.relative_to(origin).to_slices()]).all()
    # The grown border is exactly before + after more pixels per axis, no others.
    assert int(_mask(grown).sum()) - int(_mask(box).sum()) == grown.size - box.size


@given(st.integers(1, 4).flatmap(lambda n: st.tuples(boxes(n), st.integers(0, n))))
def test_leading_and_spatial_split_and_concat_back(drawn: tuple[Box, int]) -> None:
    box, dims = drawn
    lead, spatial = box.leading(dims), box.spatial(dims)
    assert spatial.ndim == dims
    assert lead.ndim == box.ndim - dims
    assert lead.concat(spatial) == box
    assert lead.size * spatial.size == box.size


@given(boxes(3), st.tuples(*[st.integers(-50, 50)] * 3))
def test_relative_to_shifts_only_the_offset(box: Box, origin: tuple[int, ...]) -> None:
    moved = box.relative_to(origin)
    assert moved.shape == box.shape
    assert moved.relative_to(tuple(-o for o in origin)) == box
    assert all(m + o == b for m, o, b in zip(moved.end, origin, box.end, strict=True))


@given(boxes(3))
def test_describe_and_ranges_agree_with_end(box: Box) -> None:
    ranges = box.ranges("zyx")
    assert list(ranges) == ["z", "y", "x"]
    assert [r[0] for r in ranges.values()] == list(box.offset)
    assert [r[1] for r in ranges.values()] == list(box.end)
    assert box.describe("zyx") == ", ".join(f"{a}={lo}:{hi}" for a, (lo, hi) in ranges.items())
    assert [(s.start, s.stop) for s in box.to_slices()] == [tuple(r) for r in ranges.values()]

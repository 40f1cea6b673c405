"""Read a block's input window from zarr, mirrored where it leaves the image.

Invariant 6: a chunk that is missing from the store is an error, never read as
fill value and segmented as background.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.errors import InputIncompleteError
from unet_tiles.pipeline.plan import Block, reflect_indices

if TYPE_CHECKING:
    import zarr

    from unet_tiles.pipeline.chunk_cache import ChunkCache
    from unet_tiles.pipeline.source import ImageSource


def chunk_keys(array: zarr.Array[Any], region: tuple[slice, ...]) -> list[str]:
    """Store keys of the chunks (or shards) that ``region`` of ``array`` touches."""
    grid = getattr(array, "shards", None) or array.chunks
    ranges = [
        range(s.start // g, -(-s.stop // g)) for s, g in zip(region, grid, strict=True)
    ]
    prefix = array.store_path.path
    keys = []
    for coords in itertools.product(*ranges):
        key = array.metadata.encode_chunk_key(coords)
        keys.append(f"{prefix}/{key}" if prefix else key)
    return keys


def missing_chunks(array: zarr.Array[Any], region: tuple[slice, ...]) -> list[str]:
    """Store keys of the chunks (or shards) that ``region`` touches and the store lacks."""
    return _absent(array, chunk_keys(array, region))


def _absent(array: zarr.Array[Any], keys: list[str]) -> list[str]:
    import asyncio

    from zarr.core.sync import sync

    store = array.store_path.store

    # All at once: a block's window touches 9 chunks or more, and one at a time each
    # waited for the one before (a thread hop on a local store, a round trip on S3).
    async def check() -> list[bool]:
        return list(await asyncio.gather(*(store.exists(key) for key in keys)))

    return [key for key, present in zip(keys, sync(check()), strict=True) if not present]


def input_region(source: ImageSource, block: Block) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """The input region a block reads, and per spatial axis the mirrored
    indices into it that make up the read window."""
    out_axes = source.axes.replace("c", "")
    lead = block.lead
    region: list[slice] = []
    takes: list[np.ndarray] = []
    for axis in source.axes:
        n = source.axis_size(axis)
        if axis == "c":
            region.append(slice(0, n))
            continue
        k = out_axes.index(axis)
        start, end = block.read.offset[k], block.read.end[k]
        if k < lead:
            region.append(slice(start, end))
            continue
        index = reflect_indices(start, end, n)
        lo, hi = int(index.min()), int(index.max()) + 1
        region.append(slice(lo, hi))
        takes.append(index - lo)
    return tuple(region), takes


def mirrored(data: np.ndarray, takes: list[np.ndarray]) -> np.ndarray:
    """``data`` (``(C, *spatial)``, as read) gathered at ``input_region``'s ``takes``.

    Inside the image the window is the data as read; only an axis that leaves the
    image has its mirrored indices gathered, one axis at a time: np.take along an
    axis is several times faster than one np.ix_ gather over all of them
    (bench/mirror_gather.py).
    """
    window = data
    for axis, take in enumerate(takes, start=1):
        if not reads_as_is(take, window.shape[axis]):
            window = np.take(window, take, axis=axis)
    return window


def reads_as_is(take: np.ndarray, extent: int) -> bool:
    """Whether mirrored indices ``take`` into an axis of ``extent`` read it as it is
    (the block stays inside the image along that axis)."""
    return len(take) == extent and take[0] == 0 and take[-1] == extent - 1 and (
        extent < 2 or bool((np.diff(take) == 1).all()))


NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.float32))


def read_window(array: zarr.Array[Any], source: ImageSource, block: Block,
                allow_missing_chunks: bool = False,
                cache: ChunkCache | None = None) -> np.ndarray:
    """The block's read window ``(C, *spatial)``, mirror-extrapolated.

    The dtype is the input's for uint8, int16 and float32, else float32.

    Only the part of the image the mirrored indices touch is read, so memory
    is the window's size even when it is far larger than a tiny image. With
    ``cache`` (one per array: ``chunk_cache.py``) the chunks come from it where
    an earlier block decoded them.
    """
    region_t, takes = input_region(source, block)
    spatial_axes = source.axes.replace("c", "")[-block.dims:]
    keep = [source.axes.index(a) for a in spatial_axes]
    try:
        data = read_region(array, region_t, keep, cache=cache,
                           allow_missing_chunks=allow_missing_chunks, location=source.location)
    except (OSError, InputIncompleteError):
        # Transient I/O: the engine retries it (faults.py); not the input's fault. A
        # missing chunk: already said so.
        raise
    except Exception as exc:  # a codec error names no chunk; say which region failed
        raise InputIncompleteError(
            f"input unreadable: {source.location} region "
            f"{[(s.start, s.stop) for s in region_t]} could not be decoded ({exc}); "
            "repair the input chunk(s) and rerun"
        ) from exc
    # Drop the iterated (t / z-for-2D) axes, each of extent 1 in a block, and
    # bring channels first.
    channel = source.axes.index("c") if "c" in source.axes else None
    order = ([channel] if channel is not None else []) + keep
    drop = [i for i in range(data.ndim) if i not in order]
    data = data.transpose(order + drop).reshape(
        [data.shape[i] for i in order]
    ) if drop else data.transpose(order)
    if channel is None:
        data = data[np.newaxis]
    window = mirrored(data, takes)
    # uint8 and int16 travel as they are (a quarter / half of float32's bytes
    # to a GPU) and become float32 on the device; the model's forward sees
    # float32 either way.
    dtype = window.dtype if window.dtype in NATIVE_DTYPES else np.dtype(np.float32)
    window = np.ascontiguousarray(window, dtype=dtype)
    if window.dtype.kind == "f" and not np.isfinite(window).all():
        # Documented policy: NaN and +-Inf pixels are read as 0 so no NaN
        # reaches the output; the same rule holds for every tile and block.
        np.nan_to_num(window, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return window


# A box of an array: (start, stop) per axis, hashable (Python 3.11's slices are not).
Piece = tuple[tuple[int, int], ...]


def read_region(array: zarr.Array[Any], region: tuple[slice, ...], split_axes: list[int], *,
                cache: ChunkCache | None = None, allow_missing_chunks: bool = False,
                location: str = "") -> np.ndarray:
    """``array[region]`` as numpy, its chunks checked present first (invariant 6).

    With ``cache``: chunk by chunk along ``split_axes`` (a block's tiled axes; along
    the others, the region's own extent), each taken from the cache or read and kept
    there. Chunks missing from the cache are read at once, one request per shard
    (per chunk where the array has no shards): their bounding box in it.
    """
    if cache is None:
        if not allow_missing_chunks:
            _check_present(array, chunk_keys(array, region), location)
        return np.asarray(array[region])
    pieces = _pieces(array, region, split_axes)
    kept: dict[Piece, np.ndarray] = {}
    for piece in pieces:
        value = cache.get(piece)
        if value is not None:
            kept[piece] = value
    fetch = _fetch_boxes(array, [piece for piece in pieces if piece not in kept], split_axes)
    boxes = [_slices(box) for box, _members in fetch]
    if boxes and not allow_missing_chunks:
        # In the order of the region's chunks, as the error lists them.
        needed = {key for box in boxes for key in chunk_keys(array, box)}
        _check_present(array, [key for key in chunk_keys(array, region) if key in needed],
                       location)
    for (box, members), data in zip(fetch, _read_boxes(array, boxes), strict=True):
        for piece in members:
            kept[piece] = data if piece == box else data[_slices(piece, box)].copy()
            cache.put(piece, kept[piece])
    dtype = next(iter(kept.values())).dtype
    out = np.empty([s.stop - s.start for s in region], dtype=dtype)
    origin = tuple((s.start, s.start) for s in region)
    for piece, value in kept.items():
        overlap = tuple((max(p0, s.start), min(p1, s.stop))
                        for (p0, p1), s in zip(piece, region, strict=True))
        out[_slices(overlap, origin)] = value[_slices(overlap, piece)]
    return out


def _pieces(array: zarr.Array[Any], region: tuple[slice, ...],
            split_axes: list[int]) -> list[Piece]:
    grid = array.chunks
    per_axis: list[list[tuple[int, int]]] = []
    for axis, s in enumerate(region):
        if axis in split_axes:
            g, n = grid[axis], array.shape[axis]
            per_axis.append([(c * g, min((c + 1) * g, n))
                             for c in range(s.start // g, -(-s.stop // g))])
        else:
            per_axis.append([(s.start, s.stop)])
    return list(itertools.product(*per_axis))


def _fetch_boxes(array: zarr.Array[Any], pieces: list[Piece],
                 split_axes: list[int]) -> list[tuple[Piece, list[Piece]]]:
    """``pieces`` grouped by the shard (or chunk) they fall in, with each group's
    bounding box: one read each."""
    unit = getattr(array, "shards", None) or array.chunks
    groups: dict[tuple[int, ...], list[Piece]] = {}
    for piece in pieces:
        groups.setdefault(tuple(piece[a][0] // unit[a] for a in split_axes), []).append(piece)
    return [(tuple((min(p[a][0] for p in group), max(p[a][1] for p in group))
                   for a in range(len(group[0]))), group)
            for group in groups.values()]


def _check_present(array: zarr.Array[Any], keys: list[str], location: str) -> None:
    """Raise ``InputIncompleteError`` naming the chunks of ``keys`` the store lacks."""
    missing = _absent(array, keys)
    if missing:
        raise InputIncompleteError(
            f"input incomplete: chunk(s) {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''} of {location} are missing; "
            "wait for the copy to finish or restore them and rerun (if the store omits "
            "chunks equal to its fill value, pass `allow_missing_chunks`)"
        )


def _read_boxes(array: zarr.Array[Any], boxes: list[tuple[slice, ...]]) -> list[np.ndarray]:
    """``array[box]`` for every box, the requests all in flight at once."""
    import asyncio

    from zarr.core.sync import sync

    if not boxes:
        return []
    reader = array.async_array

    async def read_all() -> list[Any]:
        return list(await asyncio.gather(*(reader.getitem(box) for box in boxes)))

    return [np.asarray(data) for data in sync(read_all())]


def _slices(box: Piece, origin: Piece | None = None) -> tuple[slice, ...]:
    """``box`` as slices, relative to ``origin``'s start where given."""
    if origin is None:
        return tuple(slice(b0, b1) for b0, b1 in box)
    return tuple(slice(b0 - o0, b1 - o0) for (b0, b1), (o0, _o1) in zip(box, origin, strict=True))
